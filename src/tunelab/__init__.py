"""tunelab: fine-tune pre-trained models for your own task, with evidence.

The Python API, in the order of the lifecycle::

    from tunelab import auto, fine_tune, load_run, load_spec, plan, predict, tune

    spec = load_spec("examples/news/spec.yaml")
    print(plan(spec).memory["total"])        # estimated peak bytes, before any training
    run = fine_tune(spec)                    # writes runs/<name>/
    model = load_run(run.dir)                # a RunDir
    predict(model, texts=["Shares rose after the results."])
    tune(spec, trials=20)                    # Optuna search: runs/<name>/trials/, tune.json, winner.yaml
    auto(spec, budget="30m")                 # the zero-shot -> few-shot -> LoRA -> full ladder

Importing `tunelab` is cheap: each name loads its module on first use (PEP 562), so neither
`import tunelab` nor the `tunelab` command pays for torch until something needs it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["fine_tune", "plan", "load_spec", "RunDir", "load_run", "predict", "tune", "auto"]

# public name -> module that defines it
_LAZY = {
    "fine_tune": "tunelab.recipes",
    "plan": "tunelab.auto.plan",
    "load_spec": "tunelab.spec",
    "RunDir": "tunelab.run",
    "load_run": "tunelab.api",
    "predict": "tunelab.api",
    "tune": "tunelab.auto.tune",
    "auto": "tunelab.auto",  # the package, callable: it climbs the ladder (see tunelab/auto/__init__.py)
}

if TYPE_CHECKING:
    from tunelab.api import load_run, predict
    from tunelab.auto.plan import plan
    from tunelab.auto.tune import tune
    from tunelab.auto import auto
    from tunelab.recipes import fine_tune
    from tunelab.run import RunDir
    from tunelab.spec import load_spec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
    target = import_module(module)
    # `auto` names a subpackage, bound to this package's attribute once loaded: resolve to that (callable) package
    # itself, so `tunelab.auto` is the same object before and after `tunelab.auto.energy` is imported
    value = target if target.__name__ == f"{__name__}.{name}" else getattr(target, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
