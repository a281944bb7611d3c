"""The model resolver (mtprun.resolve): local path | demo -> ModelFiles, and its one drafter rule,
which never picks a drafter the engine's own check (sidecar_fits in C++) then refuses."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from _cli_models import isolated_home, models  # noqa: F401  (fixtures)
from mtprun.config import ModelConfig
from mtprun.engine import Engine
from mtprun.errors import InvalidInputError, ModelError
from mtprun.gguf_edit import GGUFValueType as T
from mtprun.gguf_edit import rewrite_metadata
from mtprun.gguf_info import read_gguf_info
from mtprun.resolve import drafter_misfit, resolve_model
from mtprun.validate import problems


def test_a_local_model_resolves_with_its_drafter_and_says_why(models):
    files = resolve_model(models.gemma_pair)
    assert files.path == models.gemma_pair and files.label == "gemma.gguf" and files.source == "local"
    assert files.draft_path == models.gemma_pair.with_name("mtp-gemma.gguf") and files.mtp_source == "sidecar"
    assert files.info.architecture == "gemma4" and files.draft_info.architecture == "gemma4-assistant"
    assert [(n.kind, n.warning) for n in files.notes] == [("drafter-beside", False)]
    assert "-md" not in files.notes[0].message  # flag names are the CLI's
    plain = resolve_model(models.gemma_pair, mtp=False)
    assert plain.draft_path is None and plain.notes == ()
    alone = resolve_model(models.gemma_alone)
    assert alone.draft_path is None and alone.mtp_source == "none"
    embedded = resolve_model(models.demo.model_path)
    assert embedded.draft_path is None and embedded.mtp_source == "embedded" and not embedded.synthetic


def test_bad_sources_are_errors_that_name_the_argument(models, tmp_path):
    for kwargs, option in (({}, "source"), ({"model": models.demo.model_path, "demo": True}, "source"),
                           ({"model": ""}, "model"), ({"model": models.demo.model_path, "draft": " "}, "draft"),
                           ({"model": models.demo.model_path, "revision": "main"}, "revision")):
        with pytest.raises(InvalidInputError) as err:
            resolve_model(**kwargs)
        assert err.value.option == option
    with pytest.raises(ModelError) as missing:
        resolve_model(tmp_path / "nope.gguf")
    assert missing.value.path == tmp_path / "nope.gguf"


def test_a_drafter_given_but_unused_or_unfit(models):
    unused = resolve_model(models.demo.model_path, draft=models.gemma.draft_path, mtp=False)
    assert unused.draft_path is None and [n.kind for n in unused.notes] == ["drafter-unused"]
    with pytest.raises(ModelError, match="does not fit its target"):  # refused before the engine sees it
        resolve_model(models.demo.model_path, draft=models.gemma.draft_path)


def _int32_layout_target(models, folder):
    """The gemma4 target with its sliding-window pattern stored as an int32 array of 0/1 flags:
    valid metadata (validate accepts int flags, as llama.cpp reads them), but the engine's pairing
    check reads the pattern only from a bool array."""
    info = read_gguf_info(models.gemma.model_path)
    key = "gemma4.attention.sliding_window_pattern"
    flags = [int(x) for x in info.array_values[key]]
    folder.mkdir()
    target = rewrite_metadata(models.gemma.model_path, folder / "gemma.gguf", set={key: (T.ARRAY, (T.INT32, flags))})
    shutil.copy(models.gemma.draft_path, folder / "mtp-gemma.gguf")
    return target


def test_the_drafter_rule_is_as_strict_as_the_engine(models, tmp_path):
    """A case where the old Python rule (truthy values of any per-layer array) picked a drafter the
    engine then refused (exit 3): now the resolver refuses it first, with the engine's reason."""
    target = _int32_layout_target(models, tmp_path / "pair")
    t, d = read_gguf_info(target), read_gguf_info(tmp_path / "pair" / "mtp-gemma.gguf")
    assert not problems(t)  # the target itself is fine
    swa = t.array_values["gemma4.attention.sliding_window_pattern"]
    n = t.block_count
    assert swa[n - 2] and not swa[n - 1]  # what the old rule checked: it fitted
    assert "layer layout" in drafter_misfit(t, d)
    with pytest.raises(ModelError, match="does not fit its target: the target's layer layout"):
        Engine(ModelConfig(path=target, draft_path=d.path))  # the engine agrees
    files = resolve_model(target)
    assert files.draft_path is None
    assert [n.kind for n in files.notes] == ["drafter-skipped"] and "layer layout" in files.notes[0].message
    # and the pair the engine accepts, the resolver accepts
    assert drafter_misfit(read_gguf_info(models.gemma.model_path), read_gguf_info(models.gemma.draft_path)) is None


def test_the_cli_skips_such_a_drafter_instead_of_failing(models, tmp_path):
    target = _int32_layout_target(models, tmp_path / "pair")
    p = subprocess.run([sys.executable, "-m", "mtprun", "run", "-m", str(target), "-p", "hi", "-n", "4", "--temp", "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "skipping the MTP drafter mtp-gemma.gguf beside the model" in p.stderr and "MTP is off" in p.stderr
