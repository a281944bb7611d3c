"""Downloads over real HTTP from the fake Hub: cache layout, resume, offline, errors."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import threading
import time
from pathlib import Path

import pytest

from hub_fixtures import *  # noqa: F403  (fixtures: hub, hf_env, fake_hub)
from hub_fixtures import REPOS, big_gguf, cache_dir, model_gguf, run_cli, start_cli
from hub_server import FakeHub, closed_port_endpoint
from mtprun.cli._errors import message as cli_message
from mtprun import hub as mhub
from mtprun.errors import (
    DiskFullError,
    HubAuthError,
    HubConnectionError,
    HubError,
    HubNotCachedError,
    ModelError,
    NoMatchingFileError,
)

GEMMA = "unsloth/gemma-4-12b-it-GGUF"
QWEN = "unsloth/Qwen3.6-27B-MTP-GGUF"
QAT = "unsloth/gemma-4-12B-it-qat-GGUF"
UD = "gemma-4-12b-it-UD-Q4_K_XL.gguf"


def served(repo: str, path: str) -> bytes:
    return REPOS[repo]["files"][path]


def storage(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def cdn_gets(hub: FakeHub) -> list:
    return hub.seen("cdn", "GET")


def test_download_fills_the_standard_cache_shared_with_huggingface_hub(hub: FakeHub) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir, try_to_load_from_cache

    local = mhub.fetch(f"{GEMMA}:UD-Q4_K_XL")
    sha = hub.repos[GEMMA].sha
    assert local.model == storage(GEMMA) / "snapshots" / sha / UD
    assert local.model.read_bytes() == served(GEMMA, UD)
    assert local.mtp is not None and local.mtp.read_bytes() == served(GEMMA, "mtp-gemma-4-12b-it-Q8_0.gguf")
    assert (storage(GEMMA) / "refs" / "main").read_text() == sha
    # huggingface_hub sees the same files: the cache is the one `hf download` uses
    assert try_to_load_from_cache(GEMMA, UD, cache_dir=cache_dir()) == str(local.model)
    repos = {r.repo_id: r for r in scan_cache_dir(cache_dir()).repos}
    assert {f.file_name for f in next(iter(repos[GEMMA].revisions)).files} == {UD, "mtp-gemma-4-12b-it-Q8_0.gguf"}
    before = len(cdn_gets(hub))
    again = hf_hub_download(GEMMA, UD, cache_dir=cache_dir(), endpoint=hub.endpoint)
    assert again == str(local.model) and len(cdn_gets(hub)) == before
    assert not list(storage(GEMMA).glob("blobs/*.incomplete"))


def test_second_fetch_reuses_complete_files_without_transferring(hub: FakeHub) -> None:
    mhub.fetch(f"{GEMMA}:Q8_0")
    before = len(cdn_gets(hub))
    events: list[tuple[str, str]] = []
    mhub.fetch(f"{GEMMA}:Q8_0", progress=lambda e, f: events.append((e, f.path)))
    assert len(cdn_gets(hub)) == before
    assert events == [("cached", "gemma-4-12b-it-Q8_0.gguf"), ("cached", "mtp-gemma-4-12b-it-Q8_0.gguf")]


def test_what_the_model_offers_is_read_from_the_downloaded_gguf(hub: FakeHub) -> None:
    gemma = mhub.fetch(f"{GEMMA}:UD-Q4_K_XL")
    assert gemma.mtp_source == "sidecar"
    assert gemma.info.architecture == "gemma4" and not gemma.info.has_embedded_mtp
    assert gemma.mtp_info.architecture == "gemma4-assistant" and gemma.mtp_info.target_embedding_length == 8

    qwen = mhub.fetch(f"{QWEN}:UD-Q4_K_XL")
    assert qwen.mtp is None and qwen.mtp_source == "embedded" and qwen.info.nextn_predict_layers == 1

    plain = mhub.fetch("acme/plain-GGUF")
    assert plain.mtp_source == "none"  # the CLI warns: MTP will be off
    assert mhub.fetch(f"{GEMMA}:Q8_0", want_mtp=False).mtp_source == "off"


def test_split_model_downloads_every_part_and_hands_over_part_one(hub: FakeHub) -> None:
    local = mhub.fetch(f"{QWEN}:UD-Q8_K_XL")
    names = [p.name for p in local.parts]
    assert names == [f"Qwen3.6-27B-UD-Q8_K_XL-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert local.model == local.parts[0] and local.model.parent.name == "UD-Q8_K_XL"
    for p in local.parts:
        assert p.read_bytes() == served(QWEN, f"UD-Q8_K_XL/{p.name}")
    assert local.mtp_source == "embedded"


def test_mtp_folder_drafter_is_downloaded_with_the_model(hub: FakeHub) -> None:
    local = mhub.fetch(f"{QAT}:UD-Q4_K_XL", want_mmproj=True)
    assert local.mtp is not None and local.mtp.parent.name == "MTP"
    assert local.mtp_info.is_mtp_drafter and local.mmproj.name == "mmproj-F16.gguf"


BIG_REPO, BIG = "acme/big-GGUF", "big-Q8_0.gguf"


def add_big_repo(hub: FakeHub) -> bytes:
    data = big_gguf("big")
    hub.add_repo(BIG_REPO, {BIG: data})
    return data


def chunk() -> int:
    from huggingface_hub import constants

    return constants.DOWNLOAD_CHUNK_SIZE  # what huggingface_hub writes at a time


def test_a_cut_transfer_resumes_with_a_range_request(hub: FakeHub) -> None:
    data = add_big_repo(hub)
    cut = chunk() + chunk() // 2
    hub.cut(BIG, after_bytes=cut)
    local = mhub.fetch(BIG_REPO, want_mtp=False)
    gets = cdn_gets(hub)
    assert len(gets) == 2 and "range" not in gets[0].headers
    assert gets[1].headers["range"] == f"bytes={cut // chunk() * chunk()}-"
    assert hashlib.sha256(local.model.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_an_interrupted_download_is_never_complete_and_resumes_next_time(hub: FakeHub) -> None:
    data = add_big_repo(hub)
    hub.stall(BIG, after_bytes=chunk() + 1000)
    proc = start_cli("download", BIG_REPO, "--no-mtp")
    try:
        assert hub.stalled.wait(30), "the transfer never started"
        deadline = time.time() + 10
        partials: list[Path] = []
        while time.time() < deadline and not any(p.stat().st_size == chunk() for p in partials):
            partials = list(storage(BIG_REPO).glob("blobs/*.incomplete"))
            time.sleep(0.05)
        assert [p.stat().st_size for p in partials] == [chunk()]
        # nothing that looks complete: no blob, no snapshot entry
        assert not [p for p in storage(BIG_REPO).glob("blobs/*") if not p.name.endswith(".incomplete")]
        assert not list(storage(BIG_REPO).glob(f"snapshots/*/{BIG}"))
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        hub.release()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted"
    assert not list(storage(BIG_REPO).glob(f"snapshots/*/{BIG}"))

    local = mhub.fetch(BIG_REPO, want_mtp=False)
    assert cdn_gets(hub)[-1].headers["range"] == f"bytes={chunk()}-"
    assert local.model.read_bytes() == data
    assert not list(storage(BIG_REPO).glob("blobs/*.incomplete"))


def test_two_downloads_of_the_same_file_share_one_transfer(hub: FakeHub) -> None:
    data = add_big_repo(hub)
    hub.stall(BIG, after_bytes=chunk() + 1000)
    proc = start_cli("download", BIG_REPO, "--no-mtp")
    result: dict[str, mhub.LocalModel] = {}
    second = threading.Thread(target=lambda: result.setdefault("local", mhub.fetch(BIG_REPO, want_mtp=False)))
    try:
        assert hub.stalled.wait(30), "the transfer never started"
        second.start()
        time.sleep(0.5)
        assert second.is_alive()  # waiting on the cache lock the first download holds
        hub.release()  # the first transfer is dropped, resumes, completes
        second.join(60)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
        hub.release()
    assert proc.returncode == 0
    assert result["local"].model.read_bytes() == data
    gets = cdn_gets(hub)
    assert len(gets) == 2 and gets[1].headers["range"] == f"bytes={chunk()}-"  # no second full transfer


def test_offline_resolves_from_the_cache_with_no_network(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    online = mhub.fetch(f"{GEMMA}:UD-Q4_K_XL")
    hub.close()
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    offline = mhub.fetch(f"{GEMMA}:UD-Q4_K_XL", offline=True)
    assert offline.plan.source == "cache"
    assert (offline.model, offline.mtp) == (online.model, online.mtp)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment switch does the same
    assert mhub.fetch(f"{GEMMA}:ud-q4_k_xl").model == online.model
    with pytest.raises(NoMatchingFileError, match="cached for unsloth/gemma-4-12b-it-GGUF .*available: UD-Q4_K_XL"):
        mhub.fetch(f"{GEMMA}:Q8_0")
    with pytest.raises(HubNotCachedError, match="not in the cache .*HF_HUB_OFFLINE is set"):
        mhub.fetch(f"{QWEN}:Q8_0")


def test_no_network_suggests_offline_when_the_cache_has_the_model(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    mhub.fetch(f"{GEMMA}:Q8_0")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    with pytest.raises(HubConnectionError, match="already downloaded: run again with `offline`") as e:
        mhub.fetch(f"{GEMMA}:Q8_0")
    assert "run again with --offline to use it" in cli_message(e.value)  # the CLI names its flag
    with pytest.raises(HubConnectionError, match="is not downloaded either"):
        mhub.fetch(f"{GEMMA}:IQ4_XS")


def test_gated_repo_download_says_how_to_get_access_and_writes_nothing(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HubAuthError, match=r"acme/gated-GGUF is gated: accept its conditions at http://.*/acme/gated-GGUF, then log in"):
        mhub.fetch("acme/gated-GGUF")
    assert not list(storage("acme/gated-GGUF").glob("snapshots/*/*")) and not hub.seen("cdn")
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    with pytest.raises(HubAuthError, match="check that HF_TOKEN has access"):
        mhub.fetch("acme/gated-GGUF")
    hub.grant("hf_granted", "acme/gated-GGUF")
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    assert mhub.fetch("acme/gated-GGUF").model.read_bytes() == served("acme/gated-GGUF", "gated-Q8_0.gguf")


def test_the_token_goes_to_the_hub_but_never_to_the_cdn(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.grant("hf_secret", "acme/private-GGUF")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    mhub.fetch("acme/private-GGUF")
    assert all(r.headers.get("authorization") == "Bearer hf_secret" for r in hub.seen("hub"))
    assert cdn_gets(hub) and not any("authorization" in r.headers for r in hub.seen("cdn"))


def test_not_enough_disk_space_is_found_before_any_transfer(hub: FakeHub) -> None:
    hub.add_repo("acme/huge-GGUF", {"huge-Q8_0.gguf": model_gguf("huge")}, declared_size={"huge-Q8_0.gguf": 10**18})
    plan = mhub.resolve("acme/huge-GGUF")
    assert plan.total_size == 10**18
    with pytest.raises(DiskFullError, match=r"not enough disk space for the download in .*: needs 1000000\.0 TB"):
        mhub.download(plan)
    assert not hub.seen("cdn") and not list(storage("acme/huge-GGUF").glob("blobs/*"))


def test_disk_full_during_a_transfer_is_one_line_and_keeps_the_partial(hub: FakeHub) -> None:
    def small_file_limit() -> None:  # writes past 1500 bytes fail (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    res = run_cli("download", f"{GEMMA}:UD-Q4_K_XL", "--no-mtp", preexec_fn=small_file_limit)
    assert res.returncode == 5, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: disk full while downloading gemma-4-12b-it-UD-Q4_K_XL.gguf") and "run again to resume" in last
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not list(storage(GEMMA).glob(f"snapshots/*/{UD}"))
    assert [p.stat().st_size for p in storage(GEMMA).glob("blobs/*.incomplete")] == [1500]
    assert mhub.fetch(f"{GEMMA}:UD-Q4_K_XL", want_mtp=False).model.read_bytes() == served(GEMMA, UD)
    assert cdn_gets(hub)[-1].headers["range"] == "bytes=1500-"


def test_local_dir_mirrors_the_repo_layout_like_hf_download(hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    target = tmp_path / "models" / "qwen"
    local = mhub.fetch(f"{QWEN}:UD-Q8_K_XL", local_dir=target)
    assert local.model == target / "UD-Q8_K_XL" / "Qwen3.6-27B-UD-Q8_K_XL-00001-of-00003.gguf"
    assert all(p.is_file() and target in p.parents for p in local.parts)
    assert not storage(QWEN).exists()  # nothing went to the shared cache
    assert (target / ".cache" / "huggingface" / "download" / "UD-Q8_K_XL").is_dir()
    assert not list(target.rglob("*.incomplete"))
    before = len(cdn_gets(hub))
    assert hf_hub_download(QWEN, local.plan.model[0].path, local_dir=target, endpoint=hub.endpoint) == str(local.model)
    again = mhub.fetch(f"{QWEN}:UD-Q8_K_XL", local_dir=target)
    assert again.model == local.model and len(cdn_gets(hub)) == before
    assert mhub.fetch(f"{QWEN}:UD-Q8_K_XL", local_dir=target, offline=True).parts == local.parts


def test_an_outdated_file_in_local_dir_is_replaced_only_once_the_new_one_is_complete(hub: FakeHub, tmp_path: Path) -> None:
    target = tmp_path / "dl"
    old = target / "gemma-4-12b-it-Q8_0.gguf"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"an older, shorter version")
    local = mhub.fetch(f"{GEMMA}:Q8_0", want_mtp=False, local_dir=target)
    assert local.model == old and old.read_bytes() == served(GEMMA, "gemma-4-12b-it-Q8_0.gguf")


def test_a_pinned_revision_downloads_that_commit_and_resolves_offline_by_it(hub: FakeHub) -> None:
    sha = hub.repos[GEMMA].sha
    local = mhub.fetch(f"{GEMMA}:Q8_0", revision=sha, want_mtp=False)
    assert local.plan.commit == sha and local.model.parent.name == sha
    assert all(f"/resolve/{sha}/" in r.path for r in hub.seen("hub", "HEAD"))
    assert not (storage(GEMMA) / "refs" / "main").exists()  # a commit is not a branch
    assert mhub.fetch(f"{GEMMA}:Q8_0", revision=sha, offline=True).model == local.model
    with pytest.raises(HubNotCachedError):
        mhub.fetch(f"{GEMMA}:Q8_0", offline=True)  # main was never resolved


def test_a_cached_file_of_the_wrong_size_is_not_trusted(hub: FakeHub) -> None:
    local = mhub.fetch(f"{GEMMA}:Q8_0", want_mtp=False)
    blob = local.model.resolve()
    blob.write_bytes(b"GGUF")
    with pytest.raises(HubError, match="has 4 bytes but the Hub lists"):
        mhub.fetch(f"{GEMMA}:Q8_0", want_mtp=False)


def test_a_downloaded_file_that_is_not_gguf_is_a_model_error(hub: FakeHub) -> None:
    hub.add_repo("acme/liar-GGUF", {"liar-Q8_0.gguf": b"<html>not a model</html>"})
    with pytest.raises(ModelError, match="liar-Q8_0.gguf: not a GGUF file"):
        mhub.fetch("acme/liar-GGUF")


def test_settings_are_read_from_the_environment_when_used(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    local = mhub.fetch(f"{GEMMA}:Q8_0", want_mtp=False)
    assert (tmp_path / "elsewhere") in local.model.parents
    assert not os.path.exists(cache_dir())
