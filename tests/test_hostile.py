"""Hostile input, bounded: impossible GGUF metadata, absurd options, runaway chat templates, early
Ctrl-C and closed streams end with one clear line and a documented exit code -- never a signal,
a hang or a traceback. (scripts/fuzz_hostile.py runs the same families at random, at scale.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _cli_models import isolated_home, models  # noqa: F401  (fixtures)
from mtprun.chat import ChatTemplate, parse_template_kwargs
from mtprun.cli.app import app
from mtprun.errors import ChatTemplateError, InvalidInputError, ModelError
from mtprun.gguf_edit import GGUFValueType as T
from mtprun.gguf_edit import hostile_variants, read_fields, rewrite_metadata
from mtprun.gguf_info import read_gguf_info
from mtprun.validate import problems, validate_file

MTPRUN = [str(Path(sys.executable).with_name("mtprun"))] if Path(sys.executable).with_name("mtprun").exists() else [sys.executable, "-m", "mtprun"]
SKIP_KEYS = {"general.name", "general.type", "general.description", "general.quantization_version",
             "tokenizer.chat_template", "general.file_type", "tokenizer.ggml.tokens"}


def cli(*args: str, timeout: float = 90, stdin: bytes | None = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MTPRUN, *args], input=stdin, capture_output=True, timeout=timeout, env=env)


def assert_clean(p: subprocess.CompletedProcess, *, ok: bool = True) -> None:
    """No signal death, no traceback; success, or a failure with one error line."""
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode >= 0, f"killed by signal {-p.returncode}: {err[-500:]}"
    assert "Traceback" not in err and "internal error" not in err and "GGML_ASSERT" not in err, err[-800:]
    if p.returncode != 0 or not ok:
        assert p.returncode in (1, 2, 3, 4), (p.returncode, err[-500:])
        assert any(line.startswith("error: ") for line in err.splitlines()), err[-500:]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


# --- GGUF metadata ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def arch_files(models):
    return {
        "qwen35": (models.demo.model_path, "target"),
        "gemma4": (models.gemma.model_path, "target"),
        "gemma4-assistant": (models.gemma.draft_path, "drafter"),
    }


@pytest.mark.parametrize("arch", ["qwen35", "gemma4", "gemma4-assistant"])
def test_gguf_key_sweep_is_refused_before_llama_cpp_or_runs_cleanly(arch, arch_files, models, tmp_path):
    """Every hyperparameter and tokenizer key set to 0, 1, huge, negative, a wrong type (arrays:
    emptied, shortened, zeroed, retyped): the validator refuses it, or llama.cpp runs it without
    dying -- checked in a subprocess with a timeout."""
    src, role = arch_files[arch]
    fields = read_fields(src)
    assert not problems(read_gguf_info(src), role=role)  # the unmodified file is fine
    accepted, n = [], 0
    for key in fields:
        if key in SKIP_KEYS:
            continue
        for name, typed in hostile_variants(fields[key]):
            n += 1
            path = rewrite_metadata(src, tmp_path / f"{n}.gguf", set={key: typed}, sparse=True)
            try:
                validate_file(path, role=role)
            except ModelError as exc:
                assert "\n" not in str(exc) and path.name in str(exc)
                path.unlink()
                continue
            accepted.append((f"{key}={name}", rewrite_metadata(src, path, set={key: typed})))
    assert n > 100 and len(accepted) < n // 2
    draft = str(models.gemma.model_path) if role == "drafter" else ""
    jobs = [(label, f"{draft}\t{path}" if draft else f"{path}\t") for label, path in accepted]
    for label, outcome in run_in_driver(jobs):
        assert outcome == "ok" or outcome.startswith("refused: "), f"{arch} {label}: {outcome}"
    # and through the CLI, in a subprocess with a timeout: a few of the accepted files
    for label, path in accepted[:: max(1, len(accepted) // 3)]:
        args = ["-m", draft, "-md", str(path)] if draft else ["-m", str(path)]
        assert_clean(cli("run", *args, "-p", "hi", "-n", "4", "--temp", "0", "-t", "1"))


def run_in_driver(jobs: list[tuple[str, str]], timeout: float = 60) -> list[tuple[str, str]]:
    """Run ``tests/_hostile_driver.py`` over the jobs (label, "target\tdrafter"); a job that kills
    or hangs the driver is reported as such and the driver restarts after it."""
    results: list[tuple[str, str]] = []
    driver = Path(__file__).with_name("_hostile_driver.py")
    i = 0
    while i < len(jobs):
        rest = jobs[i:]
        try:
            p = subprocess.run([sys.executable, str(driver)], input="".join(j + "\n" for _, j in rest).encode(),
                               capture_output=True, timeout=timeout + 2 * len(rest))
            out, rc = p.stdout.decode("utf-8", "replace").splitlines(), p.returncode
        except subprocess.TimeoutExpired as exc:
            out, rc = (exc.stdout or b"").decode("utf-8", "replace").splitlines(), None
        done = [line for line in out if not line.startswith("start ")]
        for (label, _), outcome in zip(rest, done):
            results.append((label, outcome))
        i += len(done)
        if i < len(jobs) and len(done) < len(rest):  # the driver died (or hung) on job i
            results.append((jobs[i][0], "hang" if rc is None else f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"))
            i += 1
    return results


@pytest.mark.parametrize(
    ("arch", "key", "typed", "needle"),
    [
        ("qwen35", "qwen35.rope.dimension_count", (T.UINT32, 1000), "larger than the head size"),
        ("qwen35", "qwen35.rope.dimension_count", (T.UINT32, 0), "rope.dimension_count = 0"),
        ("qwen35", "qwen35.embedding_length_out", (T.UINT32, 128), "output width"),
        ("qwen35", "qwen35.ssm.inner_size", (T.UINT32, 7), "ssm.inner_size"),
        ("qwen35", "qwen35.attention.value_length", (T.UINT32, 0), "value_length = 0"),
        ("qwen35", "qwen35.expert_count", (T.UINT32, 8), "must route to at least one"),
        ("qwen35", "tokenizer.ggml.bos_token_id", (T.UINT32, 10**9), "outside the vocabulary"),
        ("gemma4", "gemma4.attention.shared_kv_layers", (T.UINT32, 5), "shared_kv_layers"),
        ("gemma4", "tokenizer.ggml.model", (T.STRING, "bert"), "uses the gemma4 tokenizer"),
        ("gemma4-assistant", "gemma4-assistant.attention.head_count_kv", (T.ARRAY, (T.INT32, [0, 0])), "head_count_kv"),
        ("gemma4-assistant", "gemma4-assistant.attention.head_count_kv", (T.ARRAY, (T.INT32, [7, 7])), "cannot share"),
    ],
)
def test_the_metadata_from_the_issue_is_refused_with_one_line(arch, key, typed, needle, arch_files, models, tmp_path):
    src, role = arch_files[arch]
    path = rewrite_metadata(src, tmp_path / "bad.gguf", set={key: typed})
    with pytest.raises(ModelError, match=needle):
        validate_file(path, role=role)
    args = ["info", str(models.gemma.model_path), "-md", str(path)] if role == "drafter" else ["info", str(path)]
    r = invoke(*args)  # refused before llama.cpp sees the file, so safe in-process
    assert r.exit_code == 3, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1 and needle.split()[0] in r.stderr


def test_a_misfitting_drafter_beside_the_model_is_skipped_with_a_warning(models, tmp_path):
    (tmp_path / "gemma.gguf").write_bytes(models.gemma.model_path.read_bytes())
    rewrite_metadata(models.gemma.draft_path, tmp_path / "mtp-gemma.gguf",
                     set={"gemma4-assistant.attention.key_length_swa": (T.UINT32, 32),
                          "gemma4-assistant.attention.value_length_swa": (T.UINT32, 32)})
    r = invoke("run", "-m", str(tmp_path / "gemma.gguf"), "-p", "hi", "-n", "4", "--temp", "0")
    assert r.exit_code == 0, r.stderr
    assert "skipping the MTP drafter mtp-gemma.gguf" in r.stderr and "MTP is off" in r.stderr


def test_no_mtp_ignores_a_drafter_that_does_not_fit(models):
    r = invoke("run", "-m", str(models.demo.model_path), "-md", str(models.gemma.draft_path), "--no-mtp", "-p", "hi", "-n", "4")
    assert r.exit_code == 0, r.stderr
    assert "not loaded" in r.stderr


# --- tiny contexts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ctx", ["1", "8", "9", "16"])
def test_tiny_contexts_run(models, ctx):
    for path in (models.demo.model_path, models.gemma_pair):
        r = invoke("run", "-m", str(path), "-p", "hi", "-n", "6", "--temp", "0", "-c", ctx)
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip()


# --- option ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["-t", "-ngl", "-n", "--top-k", "-c"])
@pytest.mark.parametrize("value", ["2147483648", "4294967296", "99999999999999999999999"])
def test_numbers_past_32_bits_are_usage_errors(opt, value, models):
    r = invoke("run", "-m", str(models.demo.model_path), "-p", "hi", opt, value)
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith("error: invalid option value") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("opt", "value"), [("-t", "2147483647"), ("-t", "513"), ("--temp", "1e308"), ("--repeat-penalty", "1e-320"),
                                            ("--presence-penalty", "inf"), ("--top-p", "nan"),
                                            ("--seed", str(1 << 64)), ("--seed", "99999999999999999999999")])
def test_absurd_values_are_usage_errors(opt, value, models):
    r = invoke("run", "-m", str(models.demo.model_path), "-p", "hi", opt, value)
    assert r.exit_code == 2, r.stderr
    assert "invalid option value" in r.stderr


@pytest.mark.parametrize(("model", "code", "needle"), [("", 2, "path is empty"), ("/tmp/" + "a" * 5000, 3, "File name too long")])
def test_odd_model_paths(model, code, needle):
    r = invoke("run", "-m", model, "-p", "hi")
    assert r.exit_code == code and needle in r.stderr


# --- unbounded reads and renders -------------------------------------------------------------------

@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom"])
def test_prompt_and_template_files_are_read_up_to_a_limit(source, models):
    for args in (["-f", source], ["-p", "hi", "--chat-template-file", source]):
        r = invoke("run", "-m", str(models.demo.model_path), *args)
        assert r.exit_code == 2, r.stderr
        assert "larger than" in r.stderr or "not UTF-8" in r.stderr


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("nested range", "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"),
        ("lipsum", "{{ lipsum(2000000) }}"),
        ("power tower", "{{ ((9**1000)**1000)**1000 }}"),
        ("list", "{{ ([1]*16000000)|length }}"),
        ("ljust", "{{ 'x'.ljust(900000000) }}"),
        ("format", "{{ '{:>900000000}'.format(1) }}"),
        ("percent", "{{ '%900000000d' % 1 }}"),
        ("doubling", "{% set s = namespace(v='x') %}{% for i in range(40) %}{% set s.v = s.v ~ s.v %}{% endfor %}"),
        ("flood", "{% for i in range(99999) %}{{ 'y' * 9999 }}{% endfor %}"),
    ],
)
def test_chat_templates_get_a_time_and_size_budget(name, source):
    t = ChatTemplate(source, model="evil")
    t.time_budget = 1.0
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match="evil.*failed to render"):
        t.render([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 5


def test_a_normal_template_renders_within_budget():
    t = ChatTemplate("{% for m in messages %}{{ m.role ~ ': ' ~ m.content }}\n{% endfor %}{{ 'x' * 10 }}", model="ok")
    assert t.render([{"role": "user", "content": "hi"}]) == "user: hi\nxxxxxxxxxx"


def test_template_kwargs_nested_deeply_are_refused():
    with pytest.raises(InvalidInputError, match="nested"):
        parse_template_kwargs('{"a":' + "[" * 60000 + "]" * 60000 + "}")
    with pytest.raises(InvalidInputError, match="nested"):
        parse_template_kwargs('{"a":' + "[" * 100 + "]" * 100 + "}")
    assert parse_template_kwargs('{"a": [[1]]}') == {"a": [[1]]}


# --- signals and streams ---------------------------------------------------------------------------

def test_ctrl_c_while_the_cli_imports_exits_130_without_a_traceback():
    """From the moment ``mtprun.cli`` is imported (before Typer, Rich and the engine), a Ctrl-C
    ends the program with 130 and one line. Deterministic: the signal arrives mid-import."""
    code = (
        "import sys, os, signal; sys.argv[0] = 'mtprun'; import mtprun.cli; "
        "os.kill(os.getpid(), signal.SIGINT); import mtprun.cli.app; import time; time.sleep(30)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 130 and p.stderr == b"error: interrupted\n", p.stderr[-400:]


def test_ctrl_c_early_in_a_real_run_exits_130_without_a_traceback(models):
    for delay in (0.3, 0.6):
        p = subprocess.Popen([*MTPRUN, "run", "-m", str(models.demo.model_path), "-p", "hi", "-n", "64"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        if p.returncode == 0:  # finished before the signal: nothing to check
            continue
        assert p.returncode == 130, (delay, p.returncode, err[-400:])
        # "interrupted" is said, except in a rare timing window seen under heavy load where the
        # process exits 130 with nothing on stderr (a known issue, not yet explained)
        assert b"Traceback" not in err and (b"interrupted" in err or err == b"")


def test_closed_stdout_is_an_error_not_silence(models):
    p = subprocess.run(["bash", "-c", f"{' '.join(MTPRUN)} run -m {models.demo.model_path} -p hi -n 4 >&-"], capture_output=True, timeout=90)
    assert p.returncode == 1 and b"standard output is closed" in p.stderr


def test_closed_stderr_keeps_errors_off_stdout():
    p = subprocess.run(["bash", "-c", f"{' '.join(MTPRUN)} run -m /nonexistent.gguf -p hi 2>&-"], capture_output=True, timeout=90)
    assert p.returncode == 3 and p.stdout == b""


def test_broken_pipe_exits_like_sigpipe():
    p = subprocess.run(["bash", "-c", f"{' '.join(MTPRUN)} run --help | head -c 5 >/dev/null; exit ${{PIPESTATUS[0]}}"],
                       capture_output=True, timeout=90)
    assert p.returncode == 141 and p.stderr == b""


# --- architectures without a synthetic model: the validation tables on hand-made headers ----------

def header(arch: str, scalars: dict, arrays: dict | None = None, n_vocab: int = 1000):
    from mtprun.gguf_info import GgufInfo

    arrays = arrays or {}
    sc = {"general.architecture": arch, "tokenizer.ggml.model": "gpt2", **scalars}
    return GgufInfo(
        path=Path(f"{arch}.gguf"), file_size=0, version=3, tensor_count=0, kv_count=len(sc), architecture=arch, name=None,
        basename=None, size_label=None, file_type=None, file_type_name=None, parameter_count=None, context_length=None,
        embedding_length=sc.get(f"{arch}.embedding_length"), embedding_length_out=None, block_count=sc.get(f"{arch}.block_count"),
        nextn_predict_layers=None, nextn_tensor_count=0, has_chat_template=False, tokenizer_model="gpt2", vocab_size=n_vocab,
        split_count=None, split_index=None, target_hidden_size=None, scalars=sc,
        arrays={"tokenizer.ggml.tokens": ("string", n_vocab), "tokenizer.ggml.merges": ("string", 10),
                **{k: ("int32", len(v)) for k, v in arrays.items()}},
        array_values=arrays,
    )


QWEN35MOE = {
    "qwen35moe.block_count": 4, "qwen35moe.context_length": 4096, "qwen35moe.embedding_length": 256,
    "qwen35moe.attention.head_count": 4, "qwen35moe.attention.head_count_kv": 2, "qwen35moe.attention.key_length": 64,
    "qwen35moe.attention.value_length": 64, "qwen35moe.rope.dimension_count": 16, "qwen35moe.attention.layer_norm_rms_epsilon": 1e-6,
    "qwen35moe.ssm.conv_kernel": 4, "qwen35moe.ssm.state_size": 32, "qwen35moe.ssm.group_count": 4, "qwen35moe.ssm.time_step_rank": 8,
    "qwen35moe.ssm.inner_size": 256, "qwen35moe.expert_count": 8, "qwen35moe.expert_used_count": 2,
    "qwen35moe.expert_feed_forward_length": 64, "qwen35moe.full_attention_interval": 4,
}
HY_V3 = {
    "hy_v3.block_count": 4, "hy_v3.context_length": 4096, "hy_v3.embedding_length": 256, "hy_v3.attention.head_count": 4,
    "hy_v3.attention.head_count_kv": 1, "hy_v3.expert_count": 16, "hy_v3.expert_used_count": 4, "hy_v3.expert_feed_forward_length": 64,
    "hy_v3.attention.layer_norm_rms_epsilon": 1e-5,
}


@pytest.mark.parametrize(
    ("arch", "base", "change", "needle"),
    [
        ("qwen35moe", QWEN35MOE, {"qwen35moe.expert_used_count": 0}, "route to at least one"),
        ("qwen35moe", QWEN35MOE, {"qwen35moe.expert_used_count": 9}, "more than the 8 experts"),
        ("qwen35moe", QWEN35MOE, {"qwen35moe.expert_count": 0}, "expert"),
        ("qwen35moe", QWEN35MOE, {"qwen35moe.ssm.time_step_rank": 6}, "multiple of the 4 key heads"),
        ("qwen35moe", QWEN35MOE, {"qwen35moe.full_attention_interval": 0}, "full_attention_interval"),
        ("qwen35moe", QWEN35MOE, {"qwen35moe.expert_group_count": 3}, "does not divide"),
        ("hy_v3", HY_V3, {"hy_v3.expert_feed_forward_length": 0}, "expert_feed_forward_length"),
        ("hy_v3", HY_V3, {"hy_v3.attention.head_count_kv": 3}, "cannot share"),
        ("hy_v3", HY_V3, {"hy_v3.block_count": 513}, "block_count"),
        ("hy_v3", HY_V3, {"hy_v3.expert_gating_func": 9}, "expert_gating_func"),
        ("hy_v3", HY_V3, {"tokenizer.ggml.eos_token_id": 1000}, "outside the vocabulary"),
        ("hy_v3", HY_V3, {"hy_v3.rope.scaling.type": "weird"}, "rope.scaling.type"),
    ],
)
def test_validation_tables_cover_moe_architectures(arch, base, change, needle):
    arrays = {"qwen35moe.rope.dimension_sections": (3, 3, 2, 0)} if arch == "qwen35moe" else {}
    assert problems(header(arch, base, arrays)) == []
    found = problems(header(arch, {**base, **change}, arrays))
    assert found and needle in " ".join(found)
