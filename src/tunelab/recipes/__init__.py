"""The training recipes: `fine_tune(spec)` picks the recipe of the spec's task family and runs it.

Each recipe reads top to bottom like the lifecycle (start -> prepare -> baseline -> adapt -> validate ->
package); what they share is in recipes/common.py.
"""

from __future__ import annotations

from typing import Any

from tunelab.run import RunDir
from tunelab.run.files import read_json, write_json
from tunelab.spec import RunSpec
from tunelab.train.hooks import RunHooks


def fine_tune(spec: RunSpec, resume: bool = False, force: bool = False, overwrite: bool = False,
              hooks: RunHooks | None = None) -> Any:
    """Fine-tune spec.model.base on spec.data and leave a complete run directory behind. HOOKS (a search's
    pruner, test left unscored) reach the training loop; the default is a plain run."""
    from tunelab import catalog
    from tunelab.train import methods

    methods.check_supported(spec.model.method)  # e.g. QLoRA without CUDA: refused before any work
    methods.for_spec(spec).check(spec, catalog.resolve(spec.model.base))  # e.g. setfit on a plain BERT: refused
    if spec.generative:
        from tunelab.recipes.causal_lm import fine_tune_lm

        return fine_tune_lm(spec, resume=resume, force=force, overwrite=overwrite, hooks=hooks or RunHooks())
    from tunelab.recipes.classify import fine_tune_classifier

    return fine_tune_classifier(spec, resume=resume, force=force, overwrite=overwrite,
                                hooks=hooks or RunHooks())


def score_test(run: RunDir) -> dict[str, Any]:
    """Score a finished run's test split once, after the fact, beside the untuned baseline, and add it to the
    run's metrics.json. For a search's winner: its trials were chosen by validation and never saw test, so
    this is the unbiased estimate. Returns {"fine_tuned": {"test": ...}, "baseline": {"test": ...}}."""
    spec = run.load_spec()
    if spec.generative:
        from tunelab.recipes.causal_lm import score_saved_test

        scored = score_saved_test(run)
    else:
        from tunelab.evaluate.run import evaluate_run

        held_out = evaluate_run(run.path, baseline=spec.evaluation.baseline)
        scored = {kind: {"test": splits["test"]} for kind, splits in held_out.items() if "test" in splits}
    metrics = read_json(run.file(RunDir.METRICS))
    for kind, splits in scored.items():
        metrics.setdefault(kind, {}).update(splits)
    write_json(run.file(RunDir.METRICS), metrics)
    return scored
