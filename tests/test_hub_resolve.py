"""Resolution of ``owner/name[:quant]``: the pure selection rules, then ``resolve`` over real HTTP."""

from __future__ import annotations

import random

import pytest

from hub_fixtures import *  # noqa: F403  (fixtures: hub, hf_env, fake_hub)
from hub_fixtures import REPOS
from hub_server import FakeHub, closed_port_endpoint
from mtprun import hub as mhub
from mtprun.errors import (
    HubConnectionError,
    HubError,
    HubRepoNotFoundError,
    InvalidInputError,
    NoMatchingFileError,
    UnsafeRemotePathError,
)
from mtprun.hub import HfSpec, parse_spec, plan_from_listing, unsafe_path_reason

GEMMA = "unsloth/gemma-4-12b-it-GGUF"
QWEN = "unsloth/Qwen3.6-27B-MTP-GGUF"
QAT = "unsloth/gemma-4-12B-it-qat-GGUF"


def listing(repo: str) -> list[tuple[str, int]]:
    return [(path, len(data)) for path, data in REPOS[repo]["files"].items()]


def plan(repo_or_files, tag: str | None = None, **kw) -> mhub.Plan:
    files = listing(repo_or_files) if isinstance(repo_or_files, str) else [(p, 1000) for p in repo_or_files]
    repo = repo_or_files if isinstance(repo_or_files, str) else "acme/test-GGUF"
    return plan_from_listing(HfSpec(repo, tag), files, **kw)


def paths(p: mhub.Plan) -> list[str]:
    return [f.path for f in p.model]


# --- the name ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, repo, tag",
    [
        ("unsloth/Qwen3.6-27B-MTP-GGUF:UD-Q4_K_XL", "unsloth/Qwen3.6-27B-MTP-GGUF", "UD-Q4_K_XL"),
        ("unsloth/gemma-4-12b-it-GGUF", "unsloth/gemma-4-12b-it-GGUF", None),
        ("  a/b:q8_0 ", "a/b", "q8_0"),
        ("a/b:Q4_K_M(", "a/b", "Q4_K_M("),  # literal text, not a regex
    ],
)
def test_spec_is_owner_slash_name_with_an_optional_literal_quant(text: str, repo: str, tag: str | None) -> None:
    assert parse_spec(text) == HfSpec(repo, tag)


@pytest.mark.parametrize("text", ["nope", "a/b/c", "/b", "a/", "a/b:", "a b/c", "a/b:Q4\x1b[0m", "a/b:x/y", "a/..b", "a--b/c"])
def test_malformed_specs_are_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_spec(text)


# --- the model file ---------------------------------------------------------------------------
def test_tag_matches_case_insensitively_and_needs_a_dot_or_dash_after_it() -> None:
    assert paths(plan(GEMMA, "q8_0")) == ["gemma-4-12b-it-Q8_0.gguf"]
    assert paths(plan(GEMMA, "Q5_K_M")) == ["gemma-4-12b-it-q5_k_m.gguf"]  # lower-case file name
    assert paths(plan(GEMMA, "UD-Q4_K_XL")) == ["gemma-4-12b-it-UD-Q4_K_XL.gguf"]
    with pytest.raises(NoMatchingFileError):
        plan(GEMMA, "Q4_K")  # "Q4_K" is followed by "_", not by "." or "-"


def test_tag_is_literal_text_so_regex_characters_just_match_nothing() -> None:
    for tag in ("Q4_K_M(", "Q.*", "[Q8_0]"):
        with pytest.raises(NoMatchingFileError, match="available: BF16, IQ4_XS, Q4_K_M, Q5_K_M, Q8_0, UD-Q2_K_XL, UD-Q4_K_XL"):
            plan(GEMMA, tag)


def test_unknown_tag_lists_the_quants_that_exist_and_never_sidecars() -> None:
    with pytest.raises(NoMatchingFileError) as err:
        plan(QWEN, "Q3_K_S")
    assert err.value.quants == ("Q4_K_M", "Q8_0", "UD-Q4_K_XL", "UD-Q8_K_XL")
    assert "mmproj" not in str(err.value) and "mtp" not in str(err.value).lower().replace("-mtp-gguf", "")


def test_without_tag_q4_k_m_then_q8_0_then_the_first_model_in_path_order() -> None:
    assert plan(GEMMA).model[0].path == "gemma-4-12b-it-Q4_K_M.gguf"
    assert "default quant Q4_K_M" in plan(GEMMA).model[0].why
    assert paths(plan(["m-Q8_0.gguf", "m-Q6_K.gguf", "mtp-m-Q4_K_M.gguf"])) == ["m-Q8_0.gguf"]
    shuffled = ["z-IQ4_XS.gguf", "b/a-Q6_K.gguf", "a-Q5_K_M.gguf", "mmproj-Q4_K_M.gguf"]
    random.Random(1).shuffle(shuffled)
    first = plan(shuffled).model[0]
    assert first.path == "a-Q5_K_M.gguf" and "first model file" in first.why


@pytest.mark.parametrize(
    "name",
    ["mmproj-Q8_0.gguf", "MMPROJ-Q8_0.gguf", "imatrix-Q8_0.gguf", "mtp-x-Q8_0.gguf", "eagle3-x-Q8_0.gguf", "dflash-Q8_0.gguf", "dspark-Q8_0.gguf"],
)
def test_sidecars_and_auxiliary_files_are_never_the_model(name: str) -> None:
    with pytest.raises(NoMatchingFileError, match="no model file"):
        plan([name, "m-Q4_K_M.gguf"], "Q8_0")


def test_a_repo_without_gguf_models_says_so() -> None:
    with pytest.raises(NoMatchingFileError, match="no GGUF model file in acme/test-GGUF$"):
        plan(["model.safetensors", "config.json"])
    with pytest.raises(NoMatchingFileError, match="only sidecar/auxiliary files: mmproj-F16.gguf, mtp-x.gguf"):
        plan(["mmproj-F16.gguf", "mtp-x.gguf"])


def test_split_model_picks_part_one_and_plans_every_part_in_order() -> None:
    p = plan(GEMMA, "BF16")
    assert paths(p) == ["BF16/gemma-4-12b-it-BF16-00001-of-00002.gguf", "BF16/gemma-4-12b-it-BF16-00002-of-00002.gguf"]
    assert p.model[1].why == "part 2 of 2 of the split model"
    q = plan(QWEN, "UD-Q8_K_XL")  # files under a quant folder resolve like root files
    assert [f.path.rsplit("-", 3)[-3] for f in q.model] == ["00001", "00002", "00003"]


def test_split_model_with_a_missing_part_is_refused() -> None:
    with pytest.raises(HubError, match=r"part\(s\) 2 of 3 are missing"):
        plan(["m-Q8_0-00001-of-00003.gguf", "m-Q8_0-00003-of-00003.gguf"], "Q8_0")


# --- the MTP sidecar --------------------------------------------------------------------------
def test_sidecar_is_the_quant_closest_in_bits_to_the_tag() -> None:
    p = plan(GEMMA, "UD-Q4_K_XL")
    assert p.mtp is not None and p.mtp.path == "mtp-gemma-4-12b-it-Q8_0.gguf"
    assert "closest" in p.mtp.why
    assert plan(GEMMA, "BF16").mtp.path == "mtp-gemma-4-12b-it-BF16.gguf"  # exact -BF16. match


def test_sidecar_without_tag_is_closest_to_the_model_quant() -> None:
    files = ["m-Q8_0.gguf", "mtp-m-Q4_0.gguf", "mtp-m-Q8_0.gguf", "mtp-m-F16.gguf"]
    assert plan(files).mtp.path == "mtp-m-Q8_0.gguf"  # model picked by default tag Q8_0: 8 bits


def test_exact_tag_match_beats_an_earlier_sidecar_with_the_same_bits() -> None:
    files = ["m-Q4_K_M.gguf", "mtp-a-Q4_0.gguf", "mtp-b-Q4_K_M.gguf"]
    p = plan(files, "Q4_K_M")
    assert p.mtp.path == "mtp-b-Q4_K_M.gguf" and "exact" in p.mtp.why


def test_deepest_shared_folder_beats_an_exact_match_higher_up() -> None:
    files = ["Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf", "mtp-m-Q4_K_M.gguf", "Q4_K_M/mtp-m-Q8_0.gguf"]
    p = plan(files, "Q4_K_M")
    assert p.mtp.path == "Q4_K_M/mtp-m-Q8_0.gguf" and "beside the model" in p.mtp.why
    only_root = plan(files[:3], "Q4_K_M")
    assert only_root.mtp.path == "mtp-m-Q4_K_M.gguf" and "parent folder" in only_root.mtp.why


def test_sidecar_in_an_unrelated_folder_is_not_used() -> None:
    p = plan(["m-Q8_0.gguf", "Q4_K_M/m-Q4_K_M.gguf", "Q4_K_M/mtp-m-Q8_0.gguf"], "Q8_0")
    assert p.mtp is None and p.mtp_missing


def test_drafters_only_under_an_mtp_folder_are_found_where_llama_cpp_finds_none() -> None:
    p = plan(QAT, "UD-Q4_K_XL")
    assert p.mtp is not None and p.mtp.path == "MTP/mtp-gemma-4-12B-it-qat-Q8_0.gguf"
    assert "MTP/ folder" in p.mtp.why


def test_mtp_folder_beside_the_model_beats_the_root_one_and_any_case_counts() -> None:
    files = ["UD-Q4_K_XL/m-UD-Q4_K_XL.gguf", "MTP/d-Q8_0.gguf", "UD-Q4_K_XL/mtp/d-BF16.gguf", "other/MTP/d-Q4_0.gguf"]
    assert plan(files, "UD-Q4_K_XL").mtp.path == "UD-Q4_K_XL/mtp/d-BF16.gguf"
    assert plan(files[:2] + files[3:], "UD-Q4_K_XL").mtp.path == "MTP/d-Q8_0.gguf"
    assert plan([files[0], files[3]], "UD-Q4_K_XL").mtp is None


def test_llama_cpp_rule_wins_over_the_mtp_folder_when_both_exist() -> None:
    assert plan(["m-Q8_0.gguf", "mtp-m-BF16.gguf", "MTP/mtp-m-Q8_0.gguf"], "Q8_0").mtp.path == "mtp-m-BF16.gguf"


def test_repos_with_mtp_inside_the_gguf_need_no_sidecar(hub: FakeHub) -> None:
    # the listing has no mtp-*.gguf: the plan fetches the model alone (its name cannot say more) ...
    p = mhub.resolve(f"{QWEN}:UD-Q4_K_XL")
    assert p.mtp is None and [f.role for f in p.files] == ["model"]
    # ... and the downloaded model's GGUF header says its MTP layers are inside: no sidecar needed
    local = mhub.download(p)
    assert local.mtp is None and local.embedded_mtp is True and local.mtp_source == "embedded"
    assert local.info is not None and local.info.nextn_predict_layers == 1
    assert {r.path.rsplit("/", 1)[-1] for r in hub.requests if "/resolve/" in r.path} == {p.model[0].path}


def test_no_mtp_plans_no_sidecar() -> None:
    p = plan(GEMMA, "Q8_0", want_mtp=False)
    assert p.mtp is None and not p.mtp_missing


# --- mmproj and --include ---------------------------------------------------------------------
def test_mmproj_only_when_asked_and_by_the_same_folder_rule() -> None:
    assert plan(GEMMA, "Q8_0").mmproj is None
    assert plan(GEMMA, "Q8_0", want_mmproj=True).mmproj.path == "mmproj-BF16.gguf"
    files = ["Q4_K_M/m-Q4_K_M.gguf", "Q4_K_M/mmproj-F16.gguf", "mmproj-F16.gguf"]
    assert plan(files, "Q4_K_M", want_mmproj=True).mmproj.path == "Q4_K_M/mmproj-F16.gguf"
    assert "no mmproj file" in plan(["m-Q8_0.gguf"], want_mmproj=True).notes[0]


def test_include_adds_extra_files_once_each_with_the_pattern_as_reason() -> None:
    p = plan(GEMMA, "Q8_0", include=["*.md", "BF16/", "*Q8_0*", "nothing-*"])
    extra = {f.path: f.why for f in p.extra}
    assert extra["README.md"] == "matches --include '*.md'"
    assert "BF16/gemma-4-12b-it-BF16-00002-of-00002.gguf" in extra
    assert "gemma-4-12b-it-Q8_0.gguf" not in extra  # already the model
    assert "mtp-gemma-4-12b-it-Q8_0.gguf" not in extra  # already the sidecar
    assert any("'nothing-*' matches no file" in n for n in p.notes)


# --- hostile names ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "nested/../inside-Q8_0.gguf",
        "..\\win-escape-IQ4_XS.gguf",
        "../up-Q8_0.gguf",
        "/abs-Q8_0.gguf",
        "C:/x-Q8_0.gguf",
        "c:x-Q8_0.gguf",
        "a//b-Q8_0.gguf",
        "./a-Q8_0.gguf",
        "a/./b-Q8_0.gguf",
        "\\\\server\\share\\x.gguf",
        "x\x1b[31m-Q8_0.gguf",
    ],
)
def test_unsafe_remote_names_are_refused(name: str) -> None:
    assert unsafe_path_reason(name) is not None
    with pytest.raises(UnsafeRemotePathError, match="refusing remote file name"):
        plan([name, "ok-Q5_K_M.gguf"], "Q8_0" if "Q8_0" in name else "IQ4_XS" if "IQ4" in name else "x")


def test_safe_names_pass() -> None:
    for name in ("m-Q8_0.gguf", "UD-Q4_K_XL/m-UD-Q4_K_XL-00001-of-00002.gguf", "MTP/mtp-x.gguf", "a..b.gguf"):
        assert unsafe_path_reason(name) is None


def test_unsafe_names_are_ignored_when_a_safe_file_matches_and_reported() -> None:
    p = plan(["a/../evil-Q8_0.gguf", "model-Q8_0.gguf"], "Q8_0")
    assert paths(p) == ["model-Q8_0.gguf"]
    assert p.refused == ("a/../evil-Q8_0.gguf",)
    assert any("ignored 1 unsafe file name" in n for n in p.notes)
    assert p.quants == ("Q8_0",)


def test_hostile_listing_from_the_fixture_repo() -> None:
    repo = "evil/hostile-GGUF"
    with pytest.raises(UnsafeRemotePathError, match=r"nested/\.\./inside-Q8_0\.gguf"):
        plan(repo, "Q8_0")
    with pytest.raises(UnsafeRemotePathError, match="backslash"):
        plan(repo, "IQ4_XS")
    with pytest.raises(UnsafeRemotePathError, match="include pattern"):
        plan(repo, include=["*"])
    assert paths(plan(repo)) == ["ok-Q5_K_M.gguf"]


def test_listing_order_does_not_change_the_plan() -> None:
    files = listing(GEMMA)
    first = plan_from_listing(HfSpec(GEMMA, "UD-Q4_K_XL"), files, want_mmproj=True)
    random.Random(7).shuffle(files)
    assert plan_from_listing(HfSpec(GEMMA, "UD-Q4_K_XL"), files, want_mmproj=True) == first


# --- resolve() over HTTP ----------------------------------------------------------------------
def test_resolve_lists_the_repo_through_the_hub_api(hub: FakeHub) -> None:
    p = mhub.resolve(f"{GEMMA}:UD-Q4_K_XL", want_mmproj=True)
    assert p.source == "hub" and p.commit == hub.repos[GEMMA].sha
    assert p.model[0].size == len(REPOS[GEMMA]["files"]["gemma-4-12b-it-UD-Q4_K_XL.gguf"])
    assert p.model[0].sha256 is not None
    assert (p.mtp.path, p.mmproj.path) == ("mtp-gemma-4-12b-it-Q8_0.gguf", "mmproj-BF16.gguf")
    api_calls = [r.path for r in hub.seen("hub") if r.path.startswith("/api/models/")]
    assert api_calls == [f"/api/models/{GEMMA}"]
    assert not hub.seen("cdn")  # resolving downloads nothing


def test_resolve_unknown_tag_fails_before_any_file_request(hub: FakeHub) -> None:
    with pytest.raises(NoMatchingFileError, match="available: Q4_0, UD-Q4_K_XL"):
        mhub.resolve(f"{QAT}:Q8_0")
    assert not [r for r in hub.requests if "/resolve/" in r.path] and not hub.seen("cdn")


def test_resolve_at_a_revision(hub: FakeHub) -> None:
    sha = hub.repos[GEMMA].sha
    assert mhub.resolve(GEMMA, revision=sha).commit == sha
    assert hub.seen("hub")[-1].path == f"/api/models/{GEMMA}/revision/{sha}"
    with pytest.raises(HubRepoNotFoundError, match="revision 'v9' not found"):
        mhub.resolve(GEMMA, revision="v9")


def test_unknown_repo_is_reported_with_the_login_hint(hub: FakeHub) -> None:
    with pytest.raises(HubRepoNotFoundError, match="acme/nothing-here not found .*`hf auth login`"):
        mhub.resolve("acme/nothing-here")


def test_private_repo_needs_a_token_and_the_token_is_sent(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HubRepoNotFoundError, match="if it is private, log in"):
        mhub.resolve("acme/private-GGUF")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubRepoNotFoundError, match="check that HF_TOKEN has access"):
        mhub.resolve("acme/private-GGUF")
    hub.grant("hf_good", "acme/private-GGUF")
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert mhub.resolve("acme/private-GGUF").model[0].path == "private-Q8_0.gguf"
    assert hub.seen("hub")[-1].headers.get("authorization") == "Bearer hf_good"


def test_gated_repo_lists_but_is_marked_gated(hub: FakeHub) -> None:
    p = mhub.resolve("acme/gated-GGUF")
    assert p.gated and p.model[0].path == "gated-Q8_0.gguf"


def test_repo_without_gguf_over_http(hub: FakeHub) -> None:
    with pytest.raises(NoMatchingFileError, match="no GGUF model file in acme/safetensors-only"):
        mhub.resolve("acme/safetensors-only")


def test_no_network_is_one_clear_error(hf_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    with pytest.raises(HubConnectionError, match=r"cannot reach http://127\.0\.0\.1:\d+ .*not downloaded either"):
        mhub.resolve(f"{GEMMA}:Q8_0")
