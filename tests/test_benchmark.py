"""mtprun.benchmark (the measuring code of scripts/bench_engine.py and `mtprun bench`) and the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtprun import ModelConfig
from mtprun import benchmark as bm
from mtprun.engine import Engine
from mtprun.errors import InvalidInputError

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [" Once upon a quiet", " seven curious foxes wandered"]


def expected_counts(model, last: int, n_tokens: int, n_max: int):
    """Drafted / accepted tokens and target passes of our greedy loop on an oracle model."""
    succ, mtp = model.successor, model.mtp_prediction
    drafted = accepted = passes = produced = 0
    cur = last
    while produced < n_tokens:
        n = min(n_max, n_tokens - produced - 1)
        draft, t = [], cur
        for _ in range(n):
            t = mtp[t]
            draft.append(t)
        k = 0
        for d in draft:
            if d != succ[cur]:
                break
            cur, k = d, k + 1
        cur = succ[cur]
        drafted, accepted, passes, produced = drafted + n, accepted + k, passes + 1, produced + k + 1
    return drafted, accepted, passes


def measurement(tps: float, **kw) -> bm.Measurement:
    base = dict(n_prompts=1, n_prompt_tokens=10, prompt_seconds=0.1, n_generated=100, generation_seconds=100 / tps,
                n_drafted=0, n_accepted=0, n_target_passes=100)
    return bm.Measurement(**{**base, **kw})


# --- measuring one configuration -------------------------------------------------------------


@pytest.mark.parametrize("n_max", [1, 3])
def test_measure_engine_sums_the_prompt_set_with_the_constructed_acceptance(synth_model, n_max):
    model = synth_model(arch="qwen35", mode="oracle", agree=0.7)
    with Engine(ModelConfig(path=model.model_path, n_ctx=512, n_threads=1, flash_attn=False)) as eng:
        prompts = [eng.tokenize(t) for t in TEXTS]
        m = bm.measure_engine(eng, prompts, bm.Configuration("fixed", n_max), 48)
        plain = bm.measure_engine(eng, prompts, bm.Configuration("plain"), 48)
    want = [expected_counts(model, p[-1], 48, n_max) for p in prompts]
    assert m.n_prompts == 2 and m.n_generated == 96
    assert m.n_prompt_tokens == sum(map(len, prompts))  # every prompt processed from an empty cache
    assert (m.n_drafted, m.n_accepted, m.n_target_passes) == tuple(map(sum, zip(*want)))
    assert m.acceptance == pytest.approx(sum(w[1] for w in want) / sum(w[0] for w in want))
    assert m.tokens_per_pass == pytest.approx(96 / m.n_target_passes) and m.tokens_per_pass > 1
    assert len(m.acceptance_by_position) == n_max and 0 < m.acceptance_by_position[0] < 1
    assert m.tps > 0 and m.prompt_tps > 0
    assert plain.n_drafted == 0 and plain.n_target_passes == 96 and plain.tokens_per_pass == 1.0


def test_measure_reference_reads_llama_cpp_figures(llama_ref_bin, synth_model):
    model = synth_model(arch="qwen35", mode="oracle", agree=0.7)
    m = bm.measure_reference(llama_ref_bin, model.model_path, ["Hello there"], 3, 40, threads=1, n_ctx=512)
    with Engine(ModelConfig(path=model.model_path, n_ctx=512, n_threads=1)) as eng:
        last = eng.tokenize("Hello there")[-1]
    sim = model.simulate_speculative(last, 40, 3)
    assert (m.n_generated, m.n_drafted, m.n_accepted) == (sim.n_predict, sim.n_drafted, sim.n_accept)
    assert m.tps > 0 and m.prompt_tps > 0


def test_configurations_and_their_spec(monkeypatch):
    names = [c.name for c in bm.configurations([1, 2], auto=False, reference=True)]
    assert names == ["plain", "n=1", "n=2", "llama.cpp n=1", "llama.cpp n=2"]
    fixed = bm.spec_config(bm.Configuration("fixed", 4))
    assert (fixed.n_max, fixed.adaptive) == (4, False)  # adaptive is the default: fixed n must say so
    auto = bm.spec_config(bm.Configuration("auto", 6))
    assert (auto.enabled, auto.n_max, auto.adaptive) == (True, 6, True)
    assert not bm.spec_config(bm.Configuration("plain")).enabled
    with pytest.raises(InvalidInputError):
        bm.spec_config(bm.Configuration("llama.cpp", 2))
    monkeypatch.setattr(bm, "adaptive_available", lambda: False)
    assert "auto" not in [c.name for c in bm.configurations([1], auto=True)]
    with pytest.raises(InvalidInputError, match="adaptive"):
        bm.spec_config(bm.Configuration("auto", 6))


# --- alternating, medians, targets ---------------------------------------------------------------


def test_run_alternating_rotates_the_order_and_keeps_every_run():
    configs = bm.configurations([1, 2], auto=False)
    order: list[str] = []

    def measure(c):
        order.append(c.name)
        return measurement(10.0 + len(order))

    runs = bm.run_alternating(configs, measure, reps=3)
    assert order == ["plain", "n=1", "n=2", "n=1", "n=2", "plain", "n=2", "plain", "n=1"]
    assert all(len(r) == 3 for r in runs.by_config.values()) and not runs.interrupted
    s = bm.summarize(runs.by_config[configs[0]])
    assert s.n_runs == 3 and s.tps == pytest.approx(sorted(s.tps_runs)[1])  # the median of 3
    with pytest.raises(InvalidInputError):
        bm.run_alternating(configs, measure, reps=0)


def test_ctrl_c_keeps_what_was_measured():
    configs = bm.configurations([1, 2], auto=False)
    calls = []

    def measure(c):
        calls.append(c)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return measurement(10.0)

    runs = bm.run_alternating(configs, measure, reps=3)
    assert runs.interrupted and sum(map(len, runs.by_config.values())) == 4


def summary(tps: float) -> bm.Summary:
    return bm.summarize([measurement(tps)])


def test_compare_and_targets_name_the_cells_that_miss():
    good = bm.compare({"plain": summary(10), "n=1": summary(12), "n=2": summary(14), "auto": summary(14.5),
                       "llama.cpp n=1": summary(11), "llama.cpp n=2": summary(13)})
    assert good.best_fixed == "n=2" and good.best_reference == "llama.cpp n=2"
    assert good.x_plain["n=2"] == pytest.approx(1.4)
    assert good.auto_vs_plain == pytest.approx(1.45) and good.auto_vs_best_fixed == pytest.approx(14.5 / 14)
    assert good.auto_vs_best_reference == pytest.approx(14.5 / 13)
    slow = bm.compare({"plain": summary(10), "n=1": summary(8), "auto": summary(9.0), "llama.cpp n=1": summary(9.5)})
    phase = bm.compare({"plain": summary(10), "n=1": summary(12), "auto": summary(12.2), "llama.cpp n=1": summary(11)})
    targets = bm.check_targets({"good": good, "slow": slow, "phase": phase}, phase_cells=["phase"])
    by = {t.description.split(" in ")[0].split(" on ")[0].split(",")[0]: t for t in targets}
    assert by["auto >= 0.97x plain"].misses == ("slow",) and not by["auto >= 0.97x plain"].met
    assert by["auto >= 0.97x the best fixed n"].met  # slow: auto 9.0 vs best fixed 8
    assert by["auto >= 1.05x the best fixed n"].misses == ("phase",)
    median = by["auto >= 1.05x llama.cpp's best n"]
    assert median.value == pytest.approx(12.2 / 11) and median.met
    # no auto figures: nothing to judge
    none = bm.check_targets({"x": bm.compare({"plain": summary(10), "n=1": summary(12)})})
    assert all(t.met is None for t in none)


# --- the script --------------------------------------------------------------------------------


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_engine.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_bench_script_smoke_run_writes_every_figure(tmp_path):
    out = _script("--preset", "tiny", "--quant", "f16,Q8_0", "--agree", "0.7", "--phases", "--n-max", "1,2",
                  "--reps", "2", "--tokens", "16", "--prompts", "1", "--threads", "1", "--no-ref",
                  "--cache", str(tmp_path / "cache"), "--json", "b.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    d = json.loads((tmp_path / "b.json").read_text())
    assert list(d["cells"]) == ["f16 agree 0.7", "Q8_0 agree 0.7", "f16 phases 40:0.95,40:0.2", "Q8_0 phases 40:0.95,40:0.2"]
    for cell in d["cells"].values():
        names = {"plain", "n=1", "n=2"} | ({"auto"} if bm.adaptive_available() else set())
        assert set(cell["configurations"]) == names
        assert all(len(cell["runs"][n]) == 2 for n in names)  # every repetition kept
        assert cell["configurations"]["n=1"]["acceptance"] > 0 and cell["x_plain"]["plain"] == 1.0
    assert len(d["targets"]) == 4
    # a phase cell generates two turns of its 80-token cycle, whatever --tokens says
    assert d["cells"]["f16 phases 40:0.95,40:0.2"]["tokens"] == 160 and d["cells"]["f16 agree 0.7"]["tokens"] == 16
    assert "## targets" in out.stdout and "x plain" in out.stdout


def test_bench_script_samples_when_asked(tmp_path):
    out = _script("--preset", "tiny", "--agree", "0.7", "--n-max", "1", "--no-auto", "--reps", "1", "--tokens", "8",
                  "--prompts", "1", "--threads", "1", "--temp", "0.8", "--top-k", "0", "--cache", str(tmp_path / "c"),
                  "--json", "b.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sampled (temp 0.8, top-k 0, top-p 0.95, min-p 0.05)" in out.stdout
    cell = json.loads((tmp_path / "b.json").read_text())["cells"]["f16 agree 0.7"]
    assert set(cell["configurations"]) == {"plain", "n=1"}  # llama.cpp's loop runs greedy only: not measured
    assert cell["runs"]["n=1"][0]["sample_seconds"] > 0


@pytest.mark.parametrize("args, message", [
    (["--quant", "Q9"], "unknown --quant"),
    (["--agree", "1.5"], "--agree values"),
    (["--agree", "x"], "comma-separated"),
    (["--n-max", "0"], "--n-max values"),
    (["--phases", "--phase-spec", "40"], "agree phases must look like"),
    (["--temp", "-1"], "temperature must be"),
    (["--temp", "0.8", "--top-p", "0"], "top-p must be"),
])
def test_bench_script_bad_options_get_one_line(tmp_path, args, message):
    out = _script(*args, "--cache", str(tmp_path / "c"), cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
