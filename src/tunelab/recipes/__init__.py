"""The training recipes: `fine_tune(spec)` picks the recipe of the spec's task family and runs it.

Each recipe reads top to bottom like the lifecycle (start -> prepare -> baseline -> adapt -> validate ->
package); what they share is in recipes/common.py.
"""

from __future__ import annotations

from typing import Any

from tunelab.spec import RunSpec


def fine_tune(spec: RunSpec, resume: bool = False, force: bool = False, overwrite: bool = False) -> Any:
    """Fine-tune spec.model.base on spec.data and leave a complete run directory behind."""
    from tunelab import catalog
    from tunelab.train import methods

    methods.check_supported(spec.model.method)  # e.g. QLoRA without CUDA: refused before any work
    methods.for_spec(spec).check(spec, catalog.resolve(spec.model.base))  # e.g. setfit on a plain BERT: refused
    if spec.generative:
        from tunelab.recipes.causal_lm import fine_tune_lm

        return fine_tune_lm(spec, resume=resume, force=force, overwrite=overwrite)
    from tunelab.recipes.classify import fine_tune_classifier

    return fine_tune_classifier(spec, resume=resume, force=force, overwrite=overwrite)
