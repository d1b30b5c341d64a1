"""The hyperparameter search space of `tunelab tune`: a default per task and method, narrowed or extended by
the spec's `search.space`, drawn by an Optuna trial and written onto a copy of the spec.

Every searched parameter is a `ParamRange` (tunelab.spec.schema): a range or a list of choices. The defaults
sit around what the spec would train with: the learning rate log-uniform from a fifth to five times the
rate a plain run would use (the spec's own, else the default for the method and the base model's width,
docs/defaults.md), one epoch less to twice as many epochs, half to twice
the batch size, warmup 0-20%, weight decay 0-0.1, and for LoRA-family methods on transformers models the
rank, alpha and dropout of the adapters. Light at import: pydantic only, no Optuna or torch.
"""

from __future__ import annotations

from typing import Any

from tunelab.spec import ParamRange, RunSpec, SpecError, parse_spec
from tunelab.tasks import get_task

# searched name -> where it lives in the spec
PATHS: dict[str, tuple[str, ...]] = {
    "learning_rate": ("training", "learning_rate"),
    "epochs": ("training", "epochs"),
    "batch_size": ("training", "batch_size"),
    "warmup": ("training", "warmup"),
    "weight_decay": ("training", "weight_decay"),
    "lora_r": ("model", "lora", "r"),
    "lora_alpha": ("model", "lora", "alpha"),
    "lora_dropout": ("model", "lora", "dropout"),
}
INTEGERS = frozenset({"epochs", "batch_size", "lora_r", "lora_alpha"})
LORA_PARAMS = ("lora_r", "lora_alpha", "lora_dropout")
# the methods whose adapters are configured by the spec's model.lora (tunelab.train.methods, transformers models)
LORA_METHODS = frozenset({"lora", "dora", "qlora"})


def _reads_model_lora(spec: RunSpec) -> bool:
    """Whether model.lora shapes this run: a LoRA-family method on a transformers model (image models' LoRA
    strategy has its own fixed settings). Asked of the task's protocol (`library`), not of its name."""
    return spec.model.method in LORA_METHODS and get_task(spec.task).library == "transformers"


def default_space(spec: RunSpec) -> dict[str, ParamRange]:
    """The space searched when the spec's search.space says nothing, around the spec's own settings."""
    t = spec.training
    lr = spec.learning_rate
    batch = sorted({max(1, t.batch_size // 2), t.batch_size, t.batch_size * 2})
    space = {
        "learning_rate": ParamRange(low=lr / 5, high=lr * 5, log=True),
        "epochs": ParamRange(low=max(1, t.epochs - 1), high=max(2, t.epochs * 2), step=1),
        "batch_size": ParamRange(choices=batch),
        "warmup": ParamRange(low=0.0, high=0.2),
        "weight_decay": ParamRange(low=0.0, high=0.1),
    }
    if _reads_model_lora(spec):
        space.update(lora_r=ParamRange(choices=[4, 8, 16, 32]), lora_alpha=ParamRange(choices=[8, 16, 32, 64]),
                     lora_dropout=ParamRange(low=0.0, high=0.2))
    return space


def resolve_space(spec: RunSpec) -> dict[str, ParamRange]:
    """The default space with the spec's search.space applied: a given key replaces the default's keys (choices
    replace a range and the reverse), null drops the parameter, a new valid name extends the space. Every bound
    and choice is checked to make a valid spec, so a bad space fails before the first trial."""
    space = default_space(spec)
    for name, given in spec.search.space.items():
        if name not in PATHS:
            raise SpecError(f"search.space.{name}: unknown parameter; valid: {', '.join(PATHS)}")
        if given is None:
            space.pop(name, None)
            continue
        if name in LORA_PARAMS and not _reads_model_lora(spec):
            raise SpecError(f"search.space.{name}: LoRA settings apply to model.method lora, dora or qlora on a "
                            f"text or language model; this spec uses {spec.model.method} for {spec.task}. Remove "
                            f"the key or change model.method")
        space[name] = _merge(name, space.get(name), given)
    for name, rng in space.items():
        for value in rng.choices if rng.choices is not None else (rng.low, rng.high):
            apply_params(spec, {name: _typed(name, value)})  # raises SpecError naming the parameter
    return space


def _merge(name: str, default: ParamRange | None, given: ParamRange) -> ParamRange:
    """GIVEN's keys over DEFAULT's; a range and choices never mix."""
    keys = given.model_fields_set
    base = {} if default is None else default.model_dump(exclude_none=True)
    if "choices" in keys:
        base = {}
    elif keys & {"low", "high"}:
        base.pop("choices", None)
    merged = {**base, **given.model_dump(include=keys)}
    if "choices" not in merged and ("low" not in merged or "high" not in merged):
        raise SpecError(f"search.space.{name}: give low and high, or choices")
    try:
        return ParamRange(**merged)
    except ValueError as err:
        raise SpecError(f"search.space.{name}: {err}") from None


def _typed(name: str, value: Any) -> Any:
    return int(value) if name in INTEGERS and isinstance(value, float) and value.is_integer() else value


def sample(trial: Any, space: dict[str, ParamRange]) -> dict[str, Any]:
    """One value per parameter, drawn by the Optuna TRIAL (its sampler decides: TPE after the first trials)."""
    params: dict[str, Any] = {}
    for name, rng in space.items():
        if rng.choices is not None:
            params[name] = trial.suggest_categorical(name, [_typed(name, c) for c in rng.choices])
        elif name in INTEGERS:
            params[name] = trial.suggest_int(name, int(rng.low), int(rng.high), step=int(rng.step or 1),
                                             log=bool(rng.log))
        else:
            params[name] = trial.suggest_float(name, rng.low, rng.high, step=rng.step, log=bool(rng.log))
    return params


def apply_params(spec: RunSpec, params: dict[str, Any], **top_level: Any) -> RunSpec:
    """A copy of SPEC with PARAMS written where they live (and TOP_LEVEL keys such as name, output), validated
    again by the task's schema, so a trial trains exactly what a spec with these values would."""
    data = spec.model_dump(mode="json")
    for name, value in params.items():
        *parents, leaf = PATHS[name]
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    data.update(top_level)
    try:
        return parse_spec(data, f"search parameters {params}")
    except SpecError as err:
        raise SpecError(f"{err}\n(change search.space so that it only gives valid values)") from None


def describe(space: dict[str, ParamRange]) -> dict[str, str]:
    """Each parameter's range in words, for the console and the report."""
    out = {}
    for name, rng in space.items():
        if rng.choices is not None:
            out[name] = "one of " + ", ".join(f"{c:g}" if isinstance(c, float) else str(c) for c in rng.choices)
        else:
            scale = ", log scale" if rng.log else (f", step {rng.step:g}" if rng.step else "")
            out[name] = f"{rng.low:g} to {rng.high:g}{scale}"
    return out
