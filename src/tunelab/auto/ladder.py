"""`tunelab auto`: climb the ladder zero-shot -> few-shot -> LoRA -> full fine-tuning while it pays.

The ladder is data (LADDERS, one per task family): each rung is either the untuned base scored as the
recipe scores it (its baseline), the base prompted with k training examples (generative tasks), or a
spec variant trained with the ordinary `tunelab.recipes.fine_tune` into a child run directory
`<output.dir>/<name>/rungs/<rung>`. A trained rung whose method the task does not list in its
TaskRules.methods is skipped with the reason, so a method that a task gains later (SetFit for text
classification) joins the ladder by itself.

Budget: each trained rung gets a share of the time left when it starts, among itself and the trained
rungs after it that are not skipped (classifiers: few-shot 15%, LoRA 35%, full 50%; generative: LoRA 40%,
full 60%), so time a rung does not use, or a skipped rung's share, carries to the later rungs. The
untrained rungs are not budgeted: they cost a pass over the validation split, taken from the total first.
A rung trains for at most TRAIN_FRACTION of its share (training.time_limit); the rest is for loading,
scoring and packaging.

The rule: the ladder climbs only while the validation gain pays for the compute. After a trained rung it
stops when the rung's validation metric gains less than MIN_GAIN (0.005: half a point of a 0-1 metric)
over the best rung so far, and before a trained rung it stops when the time left cannot fit it: the
previous trained rung's seconds per trial times the cost ratio of the two methods. Untrained rungs never end
the climb (they are cheap measurements, not evidence about training).

A small search inside a rung, where it fits: the learning rate is the setting that decides most (the defaults
benchmark in docs/benchmarks.md: LoRA at 2e-4 never learned the smallest class, at 1e-3 it scored 0.93), so a
LoRA or full rung whose first trial (the default rate, or the spec's) leaves room in its share for another trial
of the same cost trains again at 3x and then 1/3x that rate, each a child run directory of its own
(`rungs/<rung>-lr<rate>`), and keeps the trial with the best validation metric (among those its gate promoted).
A three-point bracket, not Optuna: with at most three trials TPE has nothing to learn from, and a fixed bracket
says plainly what was tried; `tunelab tune` is the search for a larger budget. `rung_trials=1` turns it off.

The winner is the trained rung with the best validation metric among those the run's own promotion gate
passed and that beat the zero-shot rung; it is an ordinary run directory. With none, `auto` says so and
the CLI exits with tunelab.evaluate.gate.NOT_PROMOTED_EXIT.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.auto.energy import total as energy_total
from tunelab.catalog import is_sentence_encoder
from tunelab.lm.few_shot import DEFAULT_SHOTS
from tunelab.lm.metrics import GENERATION_METRICS
from tunelab.recipes import fine_tune
from tunelab.recipes.common import resolve_base
from tunelab.run import RunDir, RunError
from tunelab.run.files import write_json, write_text
from tunelab.spec import RunSpec, dump_spec, parse_spec
from tunelab.spec.schema import duration_seconds
from tunelab.tasks.base import CAUSAL_LM, CLASSIFY

DEFAULT_BUDGET = "30m"
DEFAULT_MIN_GAIN = 0.005  # half a point of a metric that runs from 0 to 1
DEFAULT_RUNG_TRIALS = 3  # trials of a searched rung, room permitting: the rate, then LR_STEPS' other multiples
LR_STEPS = (1.0, 3.0, 1 / 3)  # the learning rates a searched rung tries, as multiples of its first trial's
TRAIN_FRACTION = 0.8  # of a rung's share, for training (training.time_limit); the rest: loading, scoring, packaging
GENERATION_METRIC = "rouge_l"  # generative rungs are judged by answers; the spec's metric when it is one of them
RUNGS, AUTO_JSON, WINNER = "rungs", "auto.json", "WINNER"

# what a rung is
BASELINE = "baseline"  # the untuned base as the recipe scores it: its baseline inside the first trained rung's run
PROMPTED = "prompted"  # the base answering the validation prompts, with or without examples (no training)
TRAINED = "trained"  # a spec variant trained by fine_tune into its own run directory

# what became of it
PENDING, COMPLETED, NOT_PROMOTED, MEASURED = "pending", "completed", "not-promoted", "measured"
SKIPPED, NOT_RUN, FAILED = "skipped", "not-run", "failed"


@dataclass(frozen=True)
class Rung:
    """One step of a ladder. SHARE: of the budget (trained rungs); COST: compute relative to LoRA on the same
    data, for the estimate of whether the next rung fits; SHOTS: a prompted rung shows k training examples."""

    name: str
    kind: str
    method: str | None = None
    share: float = 0.0
    cost: float = 0.0
    shots: bool = False
    needs_sentence_encoder: bool = False
    search: bool = False
    about: str = ""


CLASSIFIER_LADDER = (
    Rung("zero-shot", BASELINE, about="the untuned base: nearest label embedding for a sentence encoder, else the "
         "majority class (the task's baseline)"),
    Rung("few-shot", TRAINED, "setfit", share=0.15, cost=0.5, needs_sentence_encoder=True,
         about="SetFit: contrastive tuning of a sentence encoder plus a small head"),
    Rung("lora", TRAINED, "lora", share=0.35, cost=1.0, search=True, about="LoRA adapters on every linear layer"),
    Rung("full", TRAINED, "full", share=0.50, cost=2.0, search=True, about="every weight trained"),
)
GENERATIVE_LADDER = (
    Rung("zero-shot", PROMPTED, about="the base model as it is"),
    Rung("in-context", PROMPTED, shots=True, about="the base model with k training examples before each prompt"),
    Rung("lora", TRAINED, "lora", share=0.40, cost=1.0, search=True, about="LoRA adapters on every linear layer"),
    Rung("full", TRAINED, "full", share=0.60, cost=2.0, search=True, about="every weight trained"),
)
LADDERS: dict[str, tuple[Rung, ...]] = {CLASSIFY: CLASSIFIER_LADDER, CAUSAL_LM: GENERATIVE_LADDER}


@dataclass
class RungResult:
    """One row of the ladder table."""

    rung: str
    kind: str
    method: str | None
    status: str = PENDING
    metric: float | None = None  # validation, the ladder's metric
    gain: float | None = None  # over the best rung before it, in the metric's direction (positive: better)
    seconds: float | None = None
    energy_kwh: float | None = None
    co2_kg: float | None = None
    energy_method: str | None = None  # measured / estimate (tunelab.auto.energy)
    run_dir: str | None = None
    time_limit: float | None = None
    stop_reason: str | None = None  # why its training ended early (early-stopping / time-limit)
    why: str = ""
    trials: list[dict[str, Any]] = field(default_factory=list)  # a trained rung's runs: one per learning rate tried


@dataclass
class AutoResult:
    """What `auto` returns and writes to auto.json."""

    dir: Path
    metric: str
    lower_is_better: bool
    budget_s: float
    min_gain: float
    shots: int
    rungs: list[RungResult]
    rung_trials: int = DEFAULT_RUNG_TRIALS
    winner: RungResult | None = None
    verdict: str = ""
    elapsed_s: float = 0.0
    ladder: list[dict[str, Any]] = field(default_factory=list)

    @property
    def winner_dir(self) -> str | None:
        return self.winner.run_dir if self.winner else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dir"] = str(self.dir)
        data["winner"] = self.winner.rung if self.winner else None
        data["winner_dir"] = self.winner_dir
        return data


def auto(spec: RunSpec, budget: str | float = DEFAULT_BUDGET, *, min_gain: float = DEFAULT_MIN_GAIN,
         shots: int = DEFAULT_SHOTS, rung_trials: int = DEFAULT_RUNG_TRIALS, force: bool = False,
         overwrite: bool = False, say: Callable[[str], None] = print) -> AutoResult:
    """Climb SPEC's ladder within BUDGET (seconds or a duration like "30m") and leave the ladder table
    (auto.json, auto.md, auto.html) and a WINNER pointer in <output.dir>/<name>. SHOTS: the k of the
    in-context rung; MIN_GAIN: the smallest validation gain that pays for the next rung; RUNG_TRIALS: the most
    learning rates a LoRA or full rung tries when its share has room (1: no search)."""
    if rung_trials < 1:
        raise ValueError(f"rung_trials must be at least 1 (1: one trial per rung, no search), not {rung_trials}")
    memory = memory_fits(spec, say)  # before the clock: seconds of reading configs and data, no training
    total, clock = duration_seconds(budget), time.monotonic()
    root = _open(spec, overwrite)
    metric = ladder_metric(spec)
    result = AutoResult(root, metric, metric in type(spec).RULES.lower_is_better, total, min_gain, shots,
                        [], rung_trials=rung_trials, ladder=[asdict(r) for r in LADDERS[spec.family]])
    ladder = LADDERS[spec.family]
    base = resolve_base(spec)
    result.rungs = [_planned(rung, spec, base, shots, memory) for rung in ladder]
    _score_prompted(spec, ladder, result, force, say)
    stop_why = ""
    for rung, row in zip(ladder, result.rungs):
        if rung.kind != TRAINED or row.status == SKIPPED:
            continue
        if not stop_why:
            stop_why = _no_room(rung, ladder, result.rungs, total - (time.monotonic() - clock))
        if stop_why:
            row.status, row.why = NOT_RUN, stop_why
            continue
        left = total - (time.monotonic() - clock)
        row.time_limit = TRAIN_FRACTION * left * rung.share / _shares_from(rung, ladder, result.rungs)
        say(f"rung {rung.name}: {rung.about}; training for at most {row.time_limit:.0f} s of {left:.0f} s left")
        _train(spec, rung, row, root, metric, force, result, say)
        _update_gains(result.rungs, result.lower_is_better)
        stop_why = _stop_after(row, min_gain)
        say(f"rung {rung.name}: {row.status}, validation {metric} {_fmt(row.metric)} (gain {_fmt(row.gain, '+')})")
    for row in result.rungs:  # a zero-shot baseline that no trained rung's run got to score
        if row.status == PENDING:
            row.status, row.why = NOT_RUN, "not scored: it is scored as the baseline inside the first trained rung"
    result.winner, result.verdict = choose_winner(result.rungs, metric, result.lower_is_better)
    result.elapsed_s = time.monotonic() - clock
    _write(result, spec)
    say(result.verdict)
    return result


def ladder_metric(spec: RunSpec) -> str:
    """The metric the rungs are compared by: the spec's, except that a generative ladder judges answers on the
    validation prompts (its zero-shot and in-context rungs have no training loss), so loss becomes ROUGE-L."""
    metric = spec.evaluation.metric or ""
    if spec.generative and metric not in GENERATION_METRICS:
        return GENERATION_METRIC
    return metric


def skip_reason(rung: Rung, spec: RunSpec, base: str, memory: dict[str, Any] | None = None) -> str:
    """Why RUNG does not apply to SPEC ('' when it does): its method is not one of the task's, it needs a
    sentence-encoder base, or the planner's memory estimate for its method (MEMORY: method -> MethodFit as
    a dict, from `tunelab plan`) does not fit this machine."""
    methods = type(spec).RULES.methods
    if rung.method is not None and rung.method not in methods:
        return f"{spec.task} has no method '{rung.method}' (its methods: {', '.join(methods)})"
    if rung.needs_sentence_encoder and not is_sentence_encoder(base):
        return "needs a sentence-encoder base (a sentence-transformers folder); model.base is not one"
    fit = (memory or {}).get(rung.method or "")
    if fit is not None and not fit["fits"]:
        peak = f"{fit['peak_bytes'] / 2**30:.1f} GiB" if fit.get("peak_bytes") else "its peak"
        return f"the planner says it does not fit: estimated {peak} at the spec's batch size" + (
            f" ({fit['note']})" if fit.get("note") else "") + "; see `tunelab plan`"
    return ""


def memory_fits(spec: RunSpec, say: Callable[[str], None]) -> dict[str, Any]:
    """method -> the planner's MethodFit (as a dict) for this machine, from the memory estimate alone (no probe:
    seconds, no training). A spec the planner cannot read leaves every rung unchecked, and says so."""
    from tunelab.auto.plan import plan

    try:
        return {m.method: asdict(m) for m in plan(spec, probe=False).methods}
    except Exception as err:  # the planner is advice: a model it cannot size must not block the ladder
        say(f"memory not checked before the rungs (the planner failed: {err})")
        return {}


def rung_spec(spec: RunSpec, rung: Rung, root: Path, metric: str, time_limit: float | None, *,
              name: str | None = None, learning_rate: float | None = None) -> RunSpec:
    """SPEC as the trained rung RUNG runs it: its method, in root/rungs/<NAME or rung>, judged by the ladder's
    metric on validation (a generation metric is then scored every epoch), with the baseline scored, within
    TIME_LIMIT (or the spec's own, when shorter). LEARNING_RATE, when given (a search trial), is used as it is;
    else a learning rate set in the spec is scaled by the ratio of the task's default rates for the two methods
    (it was chosen for the spec's method: LoRA wants about 10x full fine-tuning's); without one, each method
    gets its default."""
    data = spec.model_dump(mode="json")
    data["name"], data["output"]["dir"] = name or rung.name, str(root / RUNGS)
    data["model"]["method"] = rung.method
    rules = type(spec).RULES
    if learning_rate:
        data["training"]["learning_rate"] = learning_rate
    elif spec.training.learning_rate:
        data["training"]["learning_rate"] = (spec.training.learning_rate * rules.learning_rate(rung.method or "")
                                             / rules.learning_rate(spec.model.method or ""))
    limits = [t for t in (spec.training.time_limit, time_limit) if t]
    data["training"]["time_limit"] = min(limits) if limits else None
    data["evaluation"]["baseline"] = True
    data["evaluation"]["metric"] = metric
    if metric in GENERATION_METRICS:
        data["evaluation"]["generation"]["every_epoch"] = True
    return parse_spec(data, f"rung {rung.name} of {spec.name}")


def read_rung_run(run_dir: Path, metric: str) -> dict[str, Any]:
    """From a finished rung's run directory: its status, the validation METRIC of the model it kept (from
    metrics.json, else the best epoch's row of history.json) and of its baseline, its seconds and energy."""
    run = RunDir(run_dir)
    status, metrics = run.status(), run.read(RunDir.METRICS)
    tuned = metrics.get("fine_tuned", {}).get("validation", {}).get(metric)
    if tuned is None:
        best = status.get("best_epoch")
        rows = [h for h in run.read(RunDir.HISTORY).get("epochs", []) if h.get("epoch") == best]
        tuned = rows[0].get(f"val_{metric}") if rows else None
    started, finished = status.get("started"), status.get("finished")
    return {"status": status.get("status"), "metric": tuned, "stop_reason": status.get("stop_reason"),
            "baseline": metrics.get("baseline", {}).get("validation", {}).get(metric),
            "seconds": finished - started if started and finished else None, "energy": status.get("energy")}


def choose_winner(rows: list[RungResult], metric: str, lower_is_better: bool) -> tuple[RungResult | None, str]:
    """The promoted trained rung with the best validation metric that beats zero-shot, and the verdict in words."""
    zero = rows[0] if rows and rows[0].metric is not None else None
    trained = [r for r in rows if r.kind == TRAINED and r.metric is not None and r.status in (COMPLETED, NOT_PROMOTED)]
    candidates = [r for r in trained if r.status == COMPLETED
                  and (zero is None or _better(r.metric, zero.metric, lower_is_better) > 0)]
    if not candidates:
        best = max(trained, key=lambda r: _better(r.metric, 0.0, lower_is_better), default=None)
        tried = (f"; the best trained rung, {best.rung}, scored {best.metric:.4f}" if best else
                 "; no trained rung finished")
        against = f"zero-shot's validation {metric} {zero.metric:.4f}" if zero else "its own untuned baseline"
        return None, (f"no trained rung beats zero-shot: nothing beat {against}{tried}. Keep the base model, or "
                      "bring more data or a larger budget")
    winner = max(candidates, key=lambda r: _better(r.metric, 0.0, lower_is_better))
    text = f"winner: {winner.rung} (validation {metric} {winner.metric:.4f}"
    if zero is not None:
        text += f", {_better(winner.metric, zero.metric, lower_is_better):+.4f} over zero-shot"
    text += f"): {winner.run_dir}"
    prompted = [r for r in rows if r.kind == PROMPTED and r.metric is not None and r is not zero
                and _better(r.metric, winner.metric, lower_is_better) > 0]
    for r in prompted:
        text += (f". Note: {r.rung} scored higher ({r.metric:.4f}) without training; it needs the examples in "
                 "every prompt")
    return winner, text


# -- the steps of auto() ------------------------------------------------------------------------------------------
def _open(spec: RunSpec, overwrite: bool) -> Path:
    root = spec.run_dir()
    if root.exists() and any(root.iterdir()):
        if RunDir(root).has_spec() and not (root / AUTO_JSON).is_file():  # --overwrite must not delete a training run
            raise RunError(f"{root} is the run directory of a `tunelab train` run, not a ladder; climb under "
                           "another name (--name)")
        if not overwrite:
            raise RunError(f"{root} already exists; pass --overwrite to replace it, or --name to climb into another")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _planned(rung: Rung, spec: RunSpec, base: str, shots: int, memory: dict[str, Any]) -> RungResult:
    why = skip_reason(rung, spec, base, memory) or ("no examples to show (shots: 0)" if rung.shots and shots < 1 else "")
    return RungResult(rung.name, rung.kind, rung.method, status=SKIPPED if why else PENDING, why=why)


def _score_prompted(spec: RunSpec, ladder: tuple[Rung, ...], result: AutoResult, force: bool,
                    say: Callable[[str], None]) -> None:
    """Score the ladder's prompted rungs (one model load for all of them)."""
    rows = {rung.shots * result.shots: row for rung, row in zip(ladder, result.rungs)
            if rung.kind == PROMPTED and row.status != SKIPPED}
    if not rows:
        return
    from tunelab.auto.prompted import score_prompted

    say(f"rungs {', '.join(r.rung for r in rows.values())}: answering the validation prompts with the base model")
    scores = score_prompted(spec, {k: result.dir / RUNGS / row.rung for k, row in rows.items()}, spec.training.seed,
                            force)
    for k, row in rows.items():
        score = scores[k]
        row.status, row.metric, row.seconds = MEASURED, score.metrics[result.metric], score.seconds
        row.run_dir = str(score.folder)
        _energy(row, score.energy)
        row.why = f"{score.metrics['n']} validation prompts" + (f", {score.shots:.1f} example(s) shown" if k else "")
        say(f"rung {row.rung}: validation {result.metric} {row.metric:.4f} ({row.why})")
    _update_gains(result.rungs, result.lower_is_better)


def _train(spec: RunSpec, rung: Rung, row: RungResult, root: Path, metric: str, force: bool, result: AutoResult,
           say: Callable[[str], None]) -> None:
    """Run a trained rung through fine_tune and fill its row (and the zero-shot row from its baseline): one trial,
    then, for a searched rung with room left in its share, more learning rates (LR_STEPS); the row is the best
    trial's, its seconds and energy the sum of all of them."""
    share = (row.time_limit or 0) / TRAIN_FRACTION  # the rung's whole share of the budget: training + the rest
    start, first_lr, last_cost = time.monotonic(), None, 0.0
    steps = LR_STEPS[:result.rung_trials] if rung.search else LR_STEPS[:1]
    search_note = ""
    for i, step in enumerate(steps):
        if i:
            if not first_lr:  # a run without a learning rate of its own: nothing to bracket
                break
            left = share - (time.monotonic() - start)
            if left < last_cost:
                search_note = (f"no room for another learning rate: a trial took {last_cost:.0f} s, {max(left, 0):.0f} s "
                               "of the rung's share left")
                break
            limit = TRAIN_FRACTION * left
        else:
            limit = row.time_limit
        lr = None if first_lr is None else first_lr * step
        name = rung.name if i == 0 else f"{rung.name}-lr{lr:.0e}"
        variant = rung_spec(spec, rung, root, metric, limit, name=name, learning_rate=lr)
        if i:
            say(f"rung {rung.name}: trying learning rate {lr:.2e} ({step:.3g}x the first trial's), at most "
                f"{variant.training.time_limit or 0:.0f} s")
        clock = time.monotonic()
        try:
            fine_tune(variant, force=force)
        except Exception as err:  # a failed first trial ends the climb (with nothing trained before, it is the answer)
            if i == 0 and not any(r.kind == TRAINED and r.status in (COMPLETED, NOT_PROMOTED) for r in result.rungs):
                raise
            row.trials.append({"name": name, "learning_rate": lr, "status": FAILED, "metric": None, "seconds": None,
                               "run_dir": str(variant.run_dir()), "why": f"{type(err).__name__}: {err}"})
            if i == 0:
                row.status, row.why, row.run_dir = FAILED, row.trials[0]["why"], row.trials[0]["run_dir"]
                return
            search_note = f"the trial at {lr:.2e} failed ({type(err).__name__}); the search stopped"
            break
        last_cost = time.monotonic() - clock
        found = read_rung_run(variant.run_dir(), metric)
        if first_lr is None:
            first_lr = RunDir(variant.run_dir()).load_spec().training.learning_rate
        row.trials.append({"name": name, "learning_rate": first_lr * step if first_lr else None,
                           "status": found["status"], "metric": found["metric"], "seconds": found["seconds"],
                           "energy": found["energy"], "stop_reason": found["stop_reason"],
                           "run_dir": str(variant.run_dir())})
        zero = result.rungs[0]
        if zero.kind == BASELINE and zero.status == PENDING and found["baseline"] is not None:
            zero.status, zero.metric, zero.run_dir = MEASURED, found["baseline"], str(variant.run_dir())
            zero.why = f"scored as the baseline inside the {rung.name} run (its time and energy are that run's)"
    _keep_best_trial(row, result.lower_is_better, search_note)


def _keep_best_trial(row: RungResult, lower_is_better: bool, search_note: str) -> None:
    """Fill ROW from its best finished trial (promoted ones first), summing the trials' seconds and energy."""
    finished = [t for t in row.trials if t["status"] in (COMPLETED, NOT_PROMOTED) and t["metric"] is not None]
    if not finished:
        best = row.trials[0]
        row.status, row.run_dir, row.why = best["status"], best["run_dir"], "its run recorded no validation metric"
        return
    pool = [t for t in finished if t["status"] == COMPLETED] or finished
    best = max(pool, key=lambda t: _better(t["metric"], 0.0, lower_is_better))
    row.status, row.metric, row.stop_reason, row.run_dir = best["status"], best["metric"], best["stop_reason"], \
        best["run_dir"]
    row.seconds = sum(t["seconds"] or 0 for t in row.trials) or None
    _energy(row, energy_total(t.get("energy") for t in row.trials))
    notes = []
    if row.status == NOT_PROMOTED:
        notes.append("its run does not beat its untuned baseline (run.json status not-promoted)")
    if row.stop_reason:
        notes.append(f"training stopped early: {row.stop_reason}")
    if len(row.trials) > 1:
        tried = ", ".join(f"{t['learning_rate']:.1e}: {_fmt(t['metric'])}" for t in row.trials)
        notes.append(f"learning-rate search, {len(row.trials)} trials ({tried}); kept {best['learning_rate']:.1e}")
    if search_note:
        notes.append(search_note)
    row.why = "; ".join(notes)


def _update_gains(rows: list[RungResult], lower_is_better: bool) -> None:
    """Each measured rung's gain over the best rung before it (None for the first)."""
    best: float | None = None
    for row in rows:
        if row.metric is None:
            continue
        row.gain = None if best is None else _better(row.metric, best, lower_is_better)
        if best is None or row.gain > 0:
            best = row.metric


def _stop_after(row: RungResult, min_gain: float) -> str:
    """Why the climb ends after ROW ('' when it goes on)."""
    if row.status == FAILED:
        return f"the {row.rung} rung failed"
    if row.gain is not None and row.gain < min_gain:
        return (f"stopped: {row.rung} gained {row.gain:+.4f} over the best rung before it, below min_gain "
                f"{min_gain:g}: the next rung's compute is not likely to pay")
    return ""


def _no_room(rung: Rung, ladder: tuple[Rung, ...], rows: list[RungResult], left: float) -> str:
    """Why RUNG cannot fit in the LEFT seconds ('' when it can): none left, or the last trained rung's time
    scaled by the ratio of the two methods' costs is more than is left."""
    if left <= 0:
        return "the budget is spent"
    done = [(r, row) for r, row in zip(ladder, rows) if r.kind == TRAINED and row.seconds and r.cost]
    if not done:
        return ""
    last, row = done[-1]
    per_trial = row.seconds / max(1, len(row.trials))
    need = per_trial * rung.cost / last.cost
    if need > left:
        return (f"the budget cannot fit {rung.name}: about {need:.0f} s ({last.name}'s {per_trial:.0f} s a trial x "
                f"cost {rung.cost / last.cost:g}), {left:.0f} s left")
    return ""


def _shares_from(rung: Rung, ladder: tuple[Rung, ...], rows: list[RungResult]) -> float:
    """The shares of RUNG and of the trained rungs after it that will run: the pool RUNG's share is part of."""
    start = ladder.index(rung)
    return sum(r.share for r, row in zip(ladder[start:], rows[start:]) if r.kind == TRAINED and row.status != SKIPPED)


def _energy(row: RungResult, record: dict[str, Any] | None) -> None:
    if record:
        row.energy_kwh, row.co2_kg, row.energy_method = record.get("energy_kwh"), record.get("co2_kg"), \
            record.get("method")


def _better(value: float, than: float, lower_is_better: bool) -> float:
    """VALUE - THAN in the metric's direction (positive: VALUE is better)."""
    return than - value if lower_is_better else value - than


def _fmt(value: float | None, sign: str = "") -> str:
    return "–" if value is None else f"{value:{sign}.4f}"


def _write(result: AutoResult, spec: RunSpec) -> None:
    from tunelab.reports.ladder_report import write_ladder_report

    data = {**result.to_dict(), "name": spec.name, "task": spec.task, "spec": dump_spec(spec)}
    write_json(result.dir / AUTO_JSON, data)
    write_ladder_report(result.dir, data)
    winner = result.dir / WINNER
    if result.winner:
        write_text(winner, f"{result.winner.run_dir}\n")
    elif winner.exists():
        winner.unlink()
