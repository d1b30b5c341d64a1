"""`tune(spec)`: hyperparameter search on Optuna, each trial an ordinary run directory.

The study lives in Optuna's RDB storage (the project database: sqlite:///<output.dir>/tunelab.db by default,
any SQLAlchemy URL otherwise), so it survives a kill and several processes can work on it: re-running the same
command continues until N trials have finished (completed + pruned). A running trial beats a heartbeat into the
database; one whose process died is marked failed when the next process starts a trial, and its parameters are
tried again (Optuna's RetryFailedTrialCallback).

Sampling: TPE seeded from training.seed (offset by the trials already in the study and by the worker number, so
a resumed or parallel process does not repeat the first process's draws). Pruning: each trial reports its
validation metric after every epoch (tunelab.train.hooks), and the pruner (median by default) stops a trial that
trails the earlier ones at the same point. When the number of epochs is itself searched, that point is the
share of the trial's schedule (step = percent of its epochs), not the epoch: the learning rate decays over the
whole schedule, so after one epoch a 2-epoch trial has annealed and a 4-epoch one has not, and judging them at
epoch 1 prunes the long trials that end best (the search benchmark on Financial PhraseBank: 16 of 20 trials
pruned at epoch 1, among them the two nearest the grid's best). A trial is not pruned before it has run
`search.warmup_epochs` epochs. Trials never score the test split; after the study the winner (best
validation metric among completed trials) is scored on test once, and that is recorded in its metrics.json, in
the study's user attributes (so a re-run does not score it again) and in tune.json.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from tunelab.auto.energy import EnergyMeter
from tunelab.auto.search_space import apply_params, describe, resolve_space, sample
from tunelab.run import RunDir
from tunelab.run.files import read_json, write_json
from tunelab.spec import ParamRange, RunSpec, parse_spec
from tunelab.train.hooks import RunHooks

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
TRIALS = "trials"  # <study dir>/trials/trial-007: one run directory per trial


@dataclass
class TuneResult:
    """What `tune` returns: the study folder (tune.json, tune.html, winner.yaml, trials/), the report's
    content, the winner's run directory (None when no trial completed) and whether the winner was promoted."""

    dir: Path
    report: dict[str, Any]
    winner: Path | None = None
    promoted: bool = False
    notes: list[str] = field(default_factory=list)


def study_folder(spec: RunSpec, name: str) -> Path:
    """<output.dir>/<study name>: the study's reports and its trials/ (the run name unless --study says otherwise,
    so two studies of one spec never share trial folders)."""
    return Path(spec.output.dir) / name


def default_storage(spec: RunSpec) -> str:
    """The project database: sqlite:///<output.dir>/tunelab.db (beside the run directories)."""
    return f"sqlite:///{(Path(spec.output.dir).resolve() / 'tunelab.db')}"


def open_study(spec: RunSpec, storage: str, name: str, seed_offset: int = 0) -> optuna.Study:
    """Create or load the study NAME in STORAGE with the spec's sampler, pruner and metric direction."""
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    heartbeat = spec.search.heartbeat_seconds
    with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna; they are what resuming needs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            storage, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
            engine_kwargs={"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None)
    existing = _count_trials(rdb, name)
    study = optuna.create_study(
        storage=rdb, study_name=name, load_if_exists=True, pruner=_pruner(spec),
        direction="minimize" if spec.lower_is_better else "maximize",
        sampler=optuna.samplers.TPESampler(seed=spec.training.seed + existing + seed_offset))
    study.set_user_attr("metric", spec.evaluation.metric)
    study.set_user_attr("step", pruning_step(resolve_space(spec)))
    return study


def _count_trials(storage: Any, name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _pruner(spec: RunSpec) -> optuna.pruners.BasePruner:
    s = spec.search
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    # Optuna's n_min_trials stays 1: requiring startup_trials completed trials at a point before judging there
    # was measured (docs/benchmarks.md, search): higher validation, but 43% of the grid's compute instead of 31%
    return optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials)  # warm-up: in the objective, in epochs


PERCENT, EPOCH = "percent of schedule", "epoch"


def pruning_step(space: dict[str, ParamRange]) -> str:
    """What a trial's intermediate step counts: the percent of its schedule when the epochs are searched (trials
    of different lengths are compared at the same share of their schedules), else the epoch."""
    epochs = space.get("epochs")
    varies = epochs is not None and (len(epochs.choices) > 1 if epochs.choices is not None else epochs.low != epochs.high)
    return PERCENT if varies else EPOCH


def finished(study: optuna.Study) -> int:
    """Trials that count towards N: completed and pruned (failed ones are retried, so they do not count)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def objective(spec: RunSpec, space: dict[str, ParamRange], study_dir: Path,
              worker: int = 0) -> Callable[[optuna.Trial], float]:
    """One trial: draw the parameters, train a child run with validation-only scoring and the pruner listening
    to each epoch, and return the best epoch's validation metric. WORKER (this process's number) is recorded
    on the trial, so the report can say who ran what."""
    from tunelab.recipes import fine_tune

    metric, unit, warmup = spec.evaluation.metric, pruning_step(space), spec.search.warmup_epochs

    def run_trial(trial: optuna.Trial) -> float:
        params = sample(trial, space)
        trial_spec = apply_params(spec, params, name=f"trial-{trial.number:03d}",
                                  output={"dir": str(study_dir / TRIALS)})
        run_dir = trial_spec.run_dir()
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", worker)

        total = trial_spec.training.epochs

        def on_epoch_end(epoch: int, validation: dict[str, Any]) -> None:
            step = round(100 * epoch / total) if unit == PERCENT else epoch
            trial.report(float(validation[metric]), step)
            trial.set_user_attr("epochs", epoch)
            if epoch >= max(1, warmup) and trial.should_prune():
                where = f"epoch {epoch} of {total}" + (f" ({step}% of its schedule)" if unit == PERCENT else "")
                raise optuna.TrialPruned(f"validation {metric} {validation[metric]:.4f} at {where} trails the "
                                         "earlier trials")

        started = time.time()
        meter = EnergyMeter(spec.energy.grid_intensity, enabled=spec.energy.track).start()
        try:
            run = fine_tune(trial_spec, overwrite=True, hooks=RunHooks(on_epoch_end=on_epoch_end, score_test=False))
        except optuna.TrialPruned:
            energy = meter.stop()  # the recipe stopped before writing its own record: this one covers the trial
            write_json(RunDir(run_dir).file(RunDir.STATUS), {"status": "pruned", "started": started,
                                                             "finished": time.time(), "energy": energy})
            trial.set_user_attr("energy", energy)
            trial.set_user_attr("seconds", round(time.time() - started, 2))
            raise
        meter.stop()  # the recipe's own record, in run.json, is the trial's
        status = read_json(RunDir(run_dir).file(RunDir.STATUS))
        trial.set_user_attr("energy", status.get("energy"))
        trial.set_user_attr("status", status["status"])
        trial.set_user_attr("seconds", round(time.time() - started, 2))
        return float(run.state.best_metric)

    return run_trial


def run_worker(spec_data: dict[str, Any], storage: str, name: str, trials: int, timeout: float | None,
               worker: int = 0, callbacks: tuple[Callable, ...] = ()) -> None:
    """One process's share of the study: trials until the study has TRIALS finished or TIMEOUT passes. Takes
    the spec as data so that `multiprocessing` (spawn) can start it in a fresh process."""
    spec = parse_spec(spec_data, "tune worker spec")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(spec, storage, name, seed_offset=1000 * worker)
    with warnings.catch_warnings():  # a killed process's trial: failed (and queued again) before counting
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if finished(study) >= trials:
        return
    # finished trials only: a trial that is RUNNING may belong to a process killed before its first heartbeat,
    # which no check can tell from a live one, and counting it would end every later run one trial short. So
    # with K workers the study can end with up to K - 1 trials over N (those still running when the N-th
    # finished are completed, not thrown away)
    stop = optuna.study.MaxTrialsCallback(trials, states=FINISHED)
    study.optimize(objective(spec, resolve_space(spec), study_folder(spec, name), worker), timeout=timeout,
                   callbacks=[stop, *callbacks], catch=())


def run_workers(spec: RunSpec, storage: str, name: str, trials: int, timeout: float | None, workers: int,
                progress: Callable | None) -> None:
    """WORKERS processes on the one study (the first is this process; the others are spawned)."""
    data = spec.model_dump(mode="json")
    callbacks = (progress,) if progress else ()
    if workers <= 1:
        run_worker(data, storage, name, trials, timeout, 0, callbacks)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    others = [context.Process(target=run_worker, args=(data, storage, name, trials, timeout, w), daemon=False)
              for w in range(1, workers)]
    for process in others:
        process.start()
    try:
        run_worker(data, storage, name, trials, timeout, 0, callbacks)
    finally:
        for process in others:
            process.join()
    failed = [p.exitcode for p in others if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} tune worker process(es) failed (exit codes {failed}); the study is "
                           "kept: run the same command again to continue it")


def tune(spec: RunSpec, trials: int | None = None, timeout: float | None = None, workers: int = 1,
         storage: str | None = None, study: str | None = None,
         progress: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> TuneResult:
    """Search spec's hyperparameters with Optuna and leave <output.dir>/<study>/ with one run directory per
    trial under trials/, tune.json, tune.html and winner.yaml. TRIALS and TIMEOUT default to the spec's
    search section; STORAGE to the project database; STUDY to the run name. PROGRESS is called after each
    trial of this process. The winner is scored on test once (see the module's docstring)."""
    from tunelab.reports.tune_report import build_report, write_report

    trials = trials or spec.search.trials
    timeout = timeout if timeout is not None else spec.search.timeout
    if not spec.training.learning_rate:  # centre the search on the rate a plain run of this base would use
        from tunelab.auto.defaults import choose_learning_rate
        from tunelab.recipes.common import resolve_base

        choose_learning_rate(spec, resolve_base(spec))
    space = resolve_space(spec)  # a bad search section fails here, before any training
    url = storage or default_storage(spec)
    name = study or spec.name or "run"
    study_dir = study_folder(spec, name)
    study_dir.mkdir(parents=True, exist_ok=True)
    run_workers(spec, url, name, trials, timeout, max(1, workers), progress)
    optuna_study = open_study(spec, url, name)
    result = TuneResult(study_dir, {})
    winner = _best_completed(optuna_study)
    test = _score_winner_once(optuna_study, winner) if winner else None
    if winner:
        result.winner = Path(winner.user_attrs["run_dir"])
        result.promoted = winner.user_attrs.get("status") == "completed"
        _write_winner_spec(spec, winner, study_dir)
    result.report = build_report(optuna_study, spec, describe(space), trials, url, winner, test)
    write_report(study_dir, result.report, optuna_study)
    return result


def _best_completed(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the best validation metric (None when none completed)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial if done else None


def _score_winner_once(study: optuna.Study, winner: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The winner's test scores: computed the first time this trial is the winner, then read back from the
    study, so re-running a finished study does not look at test again."""
    recorded = study.user_attrs.get("test")
    if recorded and recorded.get("trial") == winner.number:
        return recorded
    from tunelab.recipes import score_test

    scored = score_test(RunDir(winner.user_attrs["run_dir"]))
    recorded = {"trial": winner.number, "scored_at": time.time(), **scored}
    study.set_user_attr("test", recorded)
    return recorded


WINNER_SPEC = "winner.yaml"


def _write_winner_spec(spec: RunSpec, winner: optuna.trial.FrozenTrial, study_dir: Path) -> None:
    """winner.yaml: the spec with the winner's parameters, named <name>-winner so that `tunelab train` on it
    writes a run beside the study rather than into it."""
    from tunelab.run.files import write_text
    from tunelab.spec import dump_spec

    best = apply_params(spec, winner.params, name=f"{spec.name or 'run'}-winner")
    write_text(study_dir / WINNER_SPEC, dump_spec(best))
