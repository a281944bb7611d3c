"""Measure decoding configurations on one model: plain, fixed draft lengths, adaptive, llama.cpp.

The measuring code behind ``scripts/bench_engine.py`` (and the ``mtprun bench`` command): run
one configuration over a prompt set (:func:`measure_engine`, :func:`measure_reference`), run
all configurations in turn over several repetitions, alternating their order so that a machine
getting slower or faster affects them alike (:func:`run_alternating`), and reduce the runs to
medians (:func:`summarize`), ratios (:func:`compare`) and the adaptive-speculation targets of
issue 15 (:func:`check_targets`). Library code: it never prints and imports no UI.

Typical use::

    configs = configurations(n_max=range(1, 7), auto=True)
    with Engine(ModelConfig(path=p, flash_attn=False)) as eng:
        prompts = [eng.tokenize(t) for t in texts]
        runs = run_alternating(configs, lambda c: measure_engine(eng, prompts, c, 128), reps=3)
    table = compare({c.name: summarize(r) for c, r in runs.by_config.items()})
"""

from __future__ import annotations

import math
import os
import random
import re
import statistics
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from .config import GenerationConfig, SamplingConfig, SpecConfig
from .engine import DraftPolicy, Engine
from .errors import InvalidInputError, MtprunError
from .events import Result

__all__ = [
    "AUTO_N_MAX",
    "Comparison",
    "Configuration",
    "Measurement",
    "Runs",
    "Summary",
    "Target",
    "BUILTIN_PROMPTS",
    "adaptive_available",
    "check_targets",
    "compare",
    "configurations",
    "measure_engine",
    "measure_reference",
    "parse_n_max_list",
    "read_prompt_file",
    "run_alternating",
    "setting_name",
    "SimulatedMachine",
    "simulate_policy",
    "spec_config",
    "summarize",
    "winner",
]

AUTO_N_MAX = 6  # the adaptive mode's ceiling
Kind = Literal["plain", "fixed", "auto", "llama.cpp"]


@dataclass(frozen=True)
class Configuration:
    """One way to decode: ``plain``, ``fixed`` (draft ``n_max`` tokens every step), ``auto``
    (adaptive draft length up to ``n_max``), or ``llama.cpp`` (its ``llama-speculative-simple
    --spec-type draft-mtp`` at ``n_max``)."""

    kind: Kind
    n_max: int = 0

    @property
    def name(self) -> str:
        return {"plain": "plain", "fixed": f"n={self.n_max}", "auto": "auto",
                "llama.cpp": f"llama.cpp n={self.n_max}"}[self.kind]


def adaptive_available() -> bool:
    """Whether this mtprun's SpecConfig has the adaptive draft-length controller."""
    return "adaptive" in {f.name for f in fields(SpecConfig)}


def configurations(n_max: Iterable[int] = range(1, 7), *, auto: bool = True, reference: bool = False) -> list[Configuration]:
    """plain, fixed n for each ``n_max``, ``auto`` (when asked and available) and, with
    ``reference``, llama.cpp's loop at each ``n_max``."""
    ns = list(n_max)
    out = [Configuration("plain")] + [Configuration("fixed", n) for n in ns]
    if auto and adaptive_available():
        out.append(Configuration("auto", AUTO_N_MAX))
    if reference:
        out += [Configuration("llama.cpp", n) for n in ns]
    return out


def spec_config(config: Configuration) -> SpecConfig:
    """The engine's SpecConfig for an mtprun configuration."""
    if config.kind == "plain":
        return SpecConfig(enabled=False)
    if config.kind == "fixed":
        return SpecConfig(enabled=True, n_max=config.n_max, adaptive=False)  # type: ignore[call-arg]
    if config.kind == "auto":
        if not adaptive_available():
            raise InvalidInputError("this mtprun has no adaptive draft length (SpecConfig.adaptive)")
        return SpecConfig.parse(f"auto:{config.n_max}")  # type: ignore[attr-defined]
    raise InvalidInputError(f"{config.name} does not run in mtprun's engine")


@dataclass(frozen=True)
class Measurement:
    """One configuration run once over the whole prompt set (counts and times summed)."""

    n_prompts: int
    n_prompt_tokens: int
    prompt_seconds: float
    n_generated: int
    generation_seconds: float
    n_drafted: int
    n_accepted: int
    n_target_passes: int
    drafted_by_position: tuple[int, ...] = ()
    accepted_by_position: tuple[int, ...] = ()
    draft_seconds: float = 0.0  # in MTP-head decodes (mtprun only)
    verify_seconds: float = 0.0  # in target decodes (mtprun only)
    sample_seconds: float = 0.0  # choosing tokens (mtprun only)
    policy: dict | None = None  # the adaptive controller's estimates after the last prompt (where it has them)

    @property
    def tps(self) -> float:
        return self.n_generated / self.generation_seconds if self.generation_seconds > 0 else 0.0

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def acceptance(self) -> float:
        return self.n_accepted / self.n_drafted if self.n_drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.n_generated / self.n_target_passes if self.n_target_passes else 0.0

    @property
    def acceptance_by_position(self) -> tuple[float, ...]:
        return tuple(a / d if d else 0.0 for d, a in zip(self.drafted_by_position, self.accepted_by_position))

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(tokens_per_second=self.tps, prompt_tokens_per_second=self.prompt_tps, acceptance=self.acceptance,
                 tokens_per_target_pass=self.tokens_per_pass, acceptance_by_position=list(self.acceptance_by_position))
        return d


def _add(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    n = max(len(a), len(b))
    return tuple((a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n))


def _merge(results: Sequence[Result]) -> Measurement:
    s = [r.stats for r in results]
    drafted: tuple[int, ...] = ()
    accepted: tuple[int, ...] = ()
    for x in s:
        drafted, accepted = _add(drafted, x.drafted_by_position), _add(accepted, x.accepted_by_position)
    return Measurement(
        n_prompts=len(s),
        n_prompt_tokens=sum(x.n_prompt_tokens - x.n_prompt_reused for x in s),
        prompt_seconds=sum(x.prompt_seconds for x in s),
        n_generated=sum(x.n_generated for x in s),
        generation_seconds=sum(x.generation_seconds for x in s),
        n_drafted=sum(x.n_drafted for x in s),
        n_accepted=sum(x.n_accepted for x in s),
        n_target_passes=sum(x.n_target_passes for x in s),
        drafted_by_position=drafted,
        accepted_by_position=accepted,
        draft_seconds=sum(x.draft_seconds for x in s),
        verify_seconds=sum(x.verify_seconds for x in s),
        sample_seconds=sum(x.sample_seconds for x in s),
        policy=_policy(s[-1]) if s else None,
    )


def _policy(stats) -> dict | None:
    p = getattr(stats, "policy", None)
    return p.as_dict() if p is not None and hasattr(p, "as_dict") else None


def measure_engine(engine: Engine, prompts: Sequence[Sequence[int]], config: Configuration, n_tokens: int,
                   sampling: SamplingConfig | None = None) -> Measurement:
    """Run ``config`` once over every prompt (token ids), each from an empty cache, ``n_tokens``
    tokens each (greedy unless ``sampling`` says otherwise). A generation cancelled with
    ``engine.cancel()`` (e.g. from a Ctrl-C handler) is no measurement: KeyboardInterrupt is raised,
    which :func:`run_alternating` turns into ``Runs.interrupted``."""
    if not prompts:
        raise InvalidInputError("no prompts to measure")
    gen = GenerationConfig(max_tokens=n_tokens, sampling=sampling or SamplingConfig(temperature=0.0),
                           spec=spec_config(config))
    results = []
    for prompt in prompts:
        engine.reset()  # the same work every repetition: prefill and generation from an empty cache
        result = None
        for ev in engine.generate(prompt, gen):
            if isinstance(ev, Result):
                result = ev
        assert result is not None
        if result.stop_reason == "cancelled":
            raise KeyboardInterrupt
        results.append(result)
    return _merge(results)


_REF_ENC = re.compile(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_REF_DEC = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_REF_COUNT = re.compile(r"(n_predict|n_drafted|n_accept)\s*=\s*(\d+)")


def measure_reference(bin_dir: str | os.PathLike[str], model: str | os.PathLike[str], prompts: Sequence[str],
                      n_max: int, n_tokens: int, *, draft: str | os.PathLike[str] | None = None, threads: int = 1,
                      n_ctx: int = 2048, timeout: float = 600.0) -> Measurement:
    """Run llama.cpp's ``llama-speculative-simple --spec-type draft-mtp`` at ``n_max`` once per
    prompt (greedy, flash attention off, p-min 0) and read back its own figures."""
    tool = Path(bin_dir) / "llama-speculative-simple"
    if not tool.is_file():
        raise InvalidInputError(f"llama-speculative-simple not found in {bin_dir}")
    parts = []
    for prompt in prompts:
        cmd = [str(tool), "-m", os.fspath(model), "--spec-type", "draft-mtp", "--spec-draft-n-max", str(n_max),
               "--spec-draft-p-min", "0", "-p", prompt, "-n", str(n_tokens), "--temp", "0", "--seed", "0",
               "-t", str(threads), "-c", str(n_ctx), "-fa", "off"]
        if draft is not None:
            cmd += ["-md", os.fspath(draft)]
        # llama.cpp's logger thread races the process exit and now and then loses the summary
        # at the end of the output: run again (at most 5 times) until it is all there
        for _ in range(5):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
            except subprocess.TimeoutExpired:
                raise MtprunError(f"llama-speculative-simple took more than {timeout:g} s") from None
            except OSError as exc:
                raise MtprunError(f"cannot run llama-speculative-simple: {exc.strerror or exc}") from None
            text = out.stdout + out.stderr
            if out.returncode != 0:
                tail = [ln for ln in text.splitlines() if ln.strip()][-1:] or [str(out.returncode)]
                raise MtprunError(f"llama-speculative-simple failed: {tail[0]}")
            enc, dec, counts = _REF_ENC.search(text), _REF_DEC.search(text), dict(_REF_COUNT.findall(text))
            if enc and dec and "n_accept" in counts:
                break
        else:
            raise MtprunError("llama-speculative-simple's output kept getting cut short")
        n_pred, n_acc = int(counts["n_predict"]), int(counts["n_accept"])
        parts.append(Measurement(
            n_prompts=1, n_prompt_tokens=int(enc.group(1)), prompt_seconds=float(enc.group(2)),
            n_generated=int(dec.group(1)), generation_seconds=float(dec.group(2)),
            n_drafted=int(counts["n_drafted"]), n_accepted=n_acc,
            n_target_passes=max(1, n_pred - n_acc),  # each pass yields its accepted drafts + 1
        ))
    return Measurement(
        n_prompts=len(parts), n_prompt_tokens=sum(p.n_prompt_tokens for p in parts),
        prompt_seconds=sum(p.prompt_seconds for p in parts), n_generated=sum(p.n_generated for p in parts),
        generation_seconds=sum(p.generation_seconds for p in parts), n_drafted=sum(p.n_drafted for p in parts),
        n_accepted=sum(p.n_accepted for p in parts), n_target_passes=sum(p.n_target_passes for p in parts),
    )


@dataclass
class Runs:
    """Every measurement, per configuration, in the order taken."""

    by_config: dict[Configuration, list[Measurement]] = field(default_factory=dict)
    interrupted: bool = False  # stopped (Ctrl-C) before all repetitions were done


def run_alternating(configs: Sequence[Configuration], measure: Callable[[Configuration], Measurement], reps: int,
                    progress: Callable[[int, int, Configuration], None] | None = None) -> Runs:
    """Measure every configuration ``reps`` times, interleaved: each repetition runs all of them,
    in an order rotated by one each time (so none always runs first, right after the same other).
    ``progress(done, total, config)`` is called before each run. Ctrl-C stops with what was
    measured so far (``Runs.interrupted``)."""
    if reps < 1:
        raise InvalidInputError(f"repetitions must be at least 1, got {reps}")
    runs = Runs({c: [] for c in configs})
    total, done = reps * len(configs), 0
    try:
        for rep in range(reps):
            k = rep % max(1, len(configs))
            for c in list(configs[k:]) + list(configs[:k]):
                if progress:
                    progress(done, total, c)
                runs.by_config[c].append(measure(c))
                done += 1
    except KeyboardInterrupt:
        runs.interrupted = True
    return runs


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


@dataclass(frozen=True)
class Summary:
    """Medians over the repetitions of one configuration."""

    n_runs: int
    tps: float
    prompt_tps: float
    acceptance: float
    tokens_per_pass: float
    acceptance_by_position: tuple[float, ...]
    tps_runs: tuple[float, ...]
    draft_seconds_per_token: float = float("nan")  # one MTP-head draft (mtprun only)
    verify_seconds_per_pass: float = float("nan")  # one target pass: a plain step or a verify batch
    n_generated: int = 0  # tokens per run (the same every repetition for greedy decoding)

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(runs: Sequence[Measurement]) -> Summary:
    n_pos = max((len(r.drafted_by_position) for r in runs), default=0)
    by_pos = tuple(_median([r.acceptance_by_position[i] for r in runs if i < len(r.acceptance_by_position)
                            and r.drafted_by_position[i]]) for i in range(n_pos))
    return Summary(
        n_runs=len(runs),
        tps=_median([r.tps for r in runs]),
        prompt_tps=_median([r.prompt_tps for r in runs]),
        acceptance=_median([r.acceptance for r in runs]),
        tokens_per_pass=_median([r.tokens_per_pass for r in runs]),
        acceptance_by_position=by_pos,
        tps_runs=tuple(r.tps for r in runs),
        draft_seconds_per_token=_median([r.draft_seconds / r.n_drafted for r in runs if r.n_drafted]),
        verify_seconds_per_pass=_median([(r.verify_seconds or r.generation_seconds) / r.n_target_passes
                                         for r in runs if r.n_target_passes]),
        n_generated=int(_median([r.n_generated for r in runs])) if runs else 0,
    )


@dataclass(frozen=True)
class Comparison:
    """One model (a benchmark cell): each configuration's medians and the ratios that matter."""

    summaries: Mapping[str, Summary]  # by Configuration.name
    x_plain: Mapping[str, float]  # tok/s over plain's, by name
    best_fixed: str | None  # name of the fastest fixed n
    best_reference: str | None  # name of llama.cpp's fastest n
    auto_vs_plain: float | None
    auto_vs_best_fixed: float | None
    auto_vs_best_reference: float | None

    def as_dict(self) -> dict:
        return {
            "configurations": {k: v.as_dict() for k, v in self.summaries.items()},
            "x_plain": dict(self.x_plain), "best_fixed": self.best_fixed, "best_reference": self.best_reference,
            "auto_vs_plain": self.auto_vs_plain, "auto_vs_best_fixed": self.auto_vs_best_fixed,
            "auto_vs_best_reference": self.auto_vs_best_reference,
        }


def compare(summaries: Mapping[str, Summary]) -> Comparison:
    """Ratios of one cell's medians (configuration names as :attr:`Configuration.name`)."""
    plain = summaries.get("plain")
    x_plain = {k: (v.tps / plain.tps if plain and plain.tps > 0 else float("nan")) for k, v in summaries.items()}

    def best(prefix: str) -> str | None:
        names = [k for k in summaries if re.fullmatch(prefix + r"\d+", k) and summaries[k].n_runs]
        return max(names, key=lambda k: summaries[k].tps) if names else None

    bf, br = best("n="), best("llama.cpp n=")
    auto = summaries.get("auto")

    def ratio(other: str | None) -> float | None:
        if auto is None or not auto.n_runs or other is None or not summaries[other].tps > 0:
            return None
        return auto.tps / summaries[other].tps

    return Comparison(summaries, x_plain, bf, br, ratio("plain" if plain else None), ratio(bf), ratio(br))


@dataclass(frozen=True)
class Target:
    """One of issue 15's targets: met or not, and the cells that miss it."""

    description: str
    met: bool | None  # None: not measured (no auto or no reference figures)
    misses: tuple[str, ...]  # cell names
    value: float | None = None  # for the median target: the median ratio


def check_targets(cells: Mapping[str, Comparison], phase_cells: Iterable[str] = ()) -> list[Target]:
    """auto >= 0.97x plain in every cell; >= 0.97x the best fixed n in every cell; >= 1.05x the
    best fixed n on the phase-changing cells; >= 1.05x llama.cpp's best n, on the median over cells."""
    phase = set(phase_cells)

    def every(desc: str, key: Callable[[Comparison], float | None], bound: float, names: Iterable[str]) -> Target:
        vals = {n: key(cells[n]) for n in names}
        vals = {n: v for n, v in vals.items() if v is not None}
        if not vals:
            return Target(desc, None, ())
        misses = tuple(n for n, v in vals.items() if v < bound)
        return Target(desc, not misses, misses, min(vals.values()))

    out = [
        every("auto >= 0.97x plain in every cell", lambda c: c.auto_vs_plain, 0.97, cells),
        every("auto >= 0.97x the best fixed n in every cell", lambda c: c.auto_vs_best_fixed, 0.97, cells),
        every("auto >= 1.05x the best fixed n on the phase-changing model", lambda c: c.auto_vs_best_fixed, 1.05,
              [n for n in cells if n in phase]),
    ]
    refs = {n: c.auto_vs_best_reference for n, c in cells.items() if c.auto_vs_best_reference is not None}
    desc = "auto >= 1.05x llama.cpp's best n, median over cells"
    if refs:
        m = statistics.median(refs.values())
        out.append(Target(desc, m >= 1.05, tuple(n for n, v in refs.items() if v < 1.05) if m < 1.05 else (), m))
    else:
        out.append(Target(desc, None, ()))
    return out


# --- what `mtprun bench` adds: a prompt set, option parsing, the winner --------------------------

# The built-in prompt set: one of each kind whose acceptance differs (code gains far more from MTP
# than prose). Sent through the model's chat template by the caller.
BUILTIN_PROMPTS: tuple[tuple[str, str], ...] = (
    ("conversation", "Hi! I'm planning a weekend trip to the mountains with two friends. "
                     "What should we keep in mind, and what would you pack?"),
    ("code", "Write a Python function that parses a CSV file of (date, amount) rows, groups the amounts "
             "by month and returns the monthly totals sorted by month. Include type hints and a docstring."),
    ("list", "List the twelve months of the year, one per line, each with its number of days."),
    ("translation", "Translate into French: 'The library opens at nine in the morning and closes at six in "
                    "the evening. Books may be borrowed for three weeks and renewed twice online.'"),
    ("summary", "Summarize the following text in five sentences.\n\n"
                "The history of the bicycle spans more than two centuries. Early designs, such as the "
                "draisine of 1817, had no pedals: riders pushed themselves along with their feet. In the "
                "1860s, French makers fitted pedals to the front wheel, producing the velocipede, nicknamed "
                "the boneshaker for its iron tyres on cobbled streets. To go faster, designers enlarged the "
                "front wheel, and the high-wheeler of the 1870s became popular with daring young men, though "
                "falls were frequent and dangerous. The safety bicycle of the 1880s, with two wheels of "
                "similar size and a chain driving the rear wheel, changed everything: it was stable, "
                "efficient and suitable for almost anyone. Pneumatic tyres, introduced by John Boyd Dunlop "
                "in 1888, made riding far more comfortable. The bicycle boom of the 1890s gave women new "
                "independence and influenced clothing, road building and even the early automobile and "
                "aircraft industries. In the twentieth century, bicycles became everyday transport across "
                "much of the world, while racing, mountain biking and, more recently, electric assistance "
                "opened new uses. Today cities invest in cycle lanes to reduce traffic and pollution."),
)

MAX_PROMPT_FILE_BYTES = 1 << 20
MAX_PROMPTS = 100


def read_prompt_file(path: str | os.PathLike[str]) -> list[str]:
    """The user's prompts: one per line, or JSONL objects with a ``"prompt"`` string (when the
    first non-blank line starts with ``{``). Blank lines are skipped. At most 1 MiB and 100 prompts;
    raises InvalidInputError naming the file (and line) otherwise."""
    import json

    name = os.fspath(path)
    try:
        size = os.path.getsize(name)
        if size > MAX_PROMPT_FILE_BYTES:
            raise InvalidInputError(f"prompt file {name!r} is {size} bytes; the limit is {MAX_PROMPT_FILE_BYTES}")
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise InvalidInputError(f"prompt file {name!r} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read prompt file {name!r}: {exc.strerror or exc}") from None
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise InvalidInputError(f"prompt file {name!r} has no prompts")
    if len(lines) > MAX_PROMPTS:
        raise InvalidInputError(f"prompt file {name!r} has {len(lines)} prompts; the limit is {MAX_PROMPTS}")
    if not lines[0][1].lstrip().startswith("{"):
        return [ln.strip() for _, ln in lines]
    out = []
    for i, ln in lines:
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"prompt file {name!r} line {i}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise InvalidInputError(f"prompt file {name!r} line {i}: expected an object with a non-empty \"prompt\" string")
        out.append(obj["prompt"])
    return out


def parse_n_max_list(text: str) -> list[int]:
    """Draft lengths (option ``n_max``) as ``1,2,4`` or ranges ``1-6`` (each within 1..32), in order, once each."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise ValueError
                vals = range(a, b + 1)
            else:
                vals = range(int(part), int(part) + 1)
            out += [v for v in vals if v not in out]
    except ValueError:
        raise InvalidInputError(f"n_max must be draft lengths like 1,2,4 or 1-6, got {text!r}", option="n_max") from None
    bad = [v for v in out if not 1 <= v <= 32]
    if bad:
        raise InvalidInputError(f"n_max values must be within 1..32, got {bad[0]}", option="n_max")
    if not out:
        raise InvalidInputError(f"n_max is empty: {text!r}", option="n_max")
    return out


def setting_name(config: Configuration) -> str:
    """How a configuration is remembered and given back to ``--spec-draft-n-max``: plain, N, auto:N."""
    return {"plain": "plain", "fixed": str(config.n_max), "auto": f"auto:{config.n_max}"}.get(config.kind, config.name)


def winner(configs: Sequence[Configuration], summaries: Mapping[str, Summary]) -> Configuration | None:
    """The mtprun configuration with the highest median tok/s (llama.cpp's loop is not a setting)."""
    cands = [c for c in configs if c.kind != "llama.cpp" and c.name in summaries and summaries[c.name].n_runs
             and summaries[c.name].tps > 0]
    return max(cands, key=lambda c: summaries[c.name].tps) if cands else None


# --- the policy on a simulated machine and text ------------------------------------------------
# Wall-clock figures on a shared machine move by more than the few percent the policy's targets
# allow. The policy alone, fed the times a machine model gives and the outcomes of a seeded text
# model, makes the same choices deterministically: the controller's quality measured without noise
# (the costs and acceptance are the model's; how real they are is for the wall-clock benchmark).


@dataclass(frozen=True)
class SimulatedMachine:
    """Costs in units of a plain step: a target pass over k tokens costs ``costs[k - 1]`` when
    given (the last step repeats beyond), else 1 + slope * (k - 1); an MTP-head decode ``head``;
    the first draft after plain steps also catches the head up on the positions they skipped (up
    to ``catch_up_window``, costing ``catch_up`` for a full window); choosing each token a step
    emits from the verify pass's logits costs ``token`` (sampling a row: a plain step costs
    1 + token), and the caller's time after a step that emitted k tokens (handing them on, e.g.
    printing them) ``caller_step + k * caller_token``. With ``noise`` > 0 every timing (each pass,
    the head's decodes, the choice, the caller's) is multiplied by exp(N(0, noise)), independently:
    a shared machine's pass-to-pass jitter, which the policy must average out."""

    slope: float = 0.0
    head: float = 0.15
    catch_up: float = 0.0
    catch_up_window: int = 32
    costs: tuple[float, ...] = ()
    noise: float = 0.0
    token: float = 0.0
    caller_step: float = 0.0
    caller_token: float = 0.0

    def target(self, k: int) -> float:
        c = self.costs
        if not c:
            return 1.0 + self.slope * (k - 1)
        if k <= len(c):
            return c[k - 1]
        step = c[-1] - c[-2] if len(c) >= 2 else 0.0
        return c[-1] + step * (k - len(c))


def simulate_policy(acceptance_at: Callable[[int], float], n_tokens: int, machine: SimulatedMachine, *,
                    seed: int = 0, fixed: int | None = None, ceiling: int = AUTO_N_MAX,
                    policy: DraftPolicy | None = None) -> tuple[float, list[tuple[int, int]]]:
    """Generate ``n_tokens`` with the adaptive policy (or a fixed draft length) on ``machine``:
    draft position i of a step starting at token t is accepted with probability
    ``acceptance_at(t + i)``. Returns tokens per unit time (plain decoding without noise or the
    per-token and caller's costs: 1.0)
    and the steps as (drafted, accepted). ``policy``: the policy to use (and leave with what it
    learnt), else a new one with ``ceiling``."""
    rng = random.Random(seed)
    jitter_rng = random.Random(f"noise-{seed}")  # the texts' draws do not depend on the noise

    def jitter() -> float:
        return math.exp(jitter_rng.gauss(0.0, machine.noise)) if machine.noise > 0 else 1.0

    policy = policy if policy is not None else DraftPolicy(ceiling)
    made, time, plain_run, steps, last_k = 0, 0.0, 0, [], 0
    while made < n_tokens:
        n = policy.next() if fixed is None else fixed
        n_acc = 0
        while n_acc < n and rng.random() < acceptance_at(made + n_acc):
            n_acc += 1
        verify = machine.target(n + 1) * jitter()
        catch_up = machine.catch_up * min(plain_run, machine.catch_up_window) / machine.catch_up_window if n else 0.0
        head = (n * machine.head + catch_up) * jitter()
        choose = (n_acc + 1) * machine.token * jitter() if machine.token else 0.0
        has_caller = last_k and (machine.caller_step or machine.caller_token)
        caller = (machine.caller_step + last_k * machine.caller_token) * jitter() if has_caller else 0.0
        step = verify + head + choose + caller
        policy.observe(n, n_acc, step_seconds=step, verify_seconds=verify, head_decodes=0 if plain_run else n,
                       head_seconds=head, choose_seconds=choose, caller_seconds=caller, caller_tokens=last_k)
        last_k = n_acc + 1
        time += step
        made += n_acc + 1
        plain_run = plain_run + 1 if n == 0 else 0
        steps.append((n, n_acc))
    return made / time, steps
