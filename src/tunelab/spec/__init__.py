"""The run spec: one YAML file that says what to fine-tune, on which data, and how.

Validated by pydantic against the schema of the spec's task: each task contributes its own spec
(tunelab.tasks: `Task.spec_class`), built from the shared sections in tunelab.spec.schema. Unknown keys
are errors that name the closest valid key of that task's schema, because a typo silently ignored is a
training run wasted. Importing this module is light (pydantic and yaml): the CLI validates a spec in well
under a second, before any training library is imported.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.spec.schema import (DataSpec, EnergySpec, EvaluationSpec, LoraSpec, ModelSpec, MonitorSpec, OutputSpec,
                                 ParamRange, RunSpec, SearchSpec, SpecError, SplitSpec, TaskRules, TrainingSpec)

__all__ = ["DataSpec", "EnergySpec", "EvaluationSpec", "LoraSpec", "ModelSpec", "MonitorSpec", "OutputSpec",
           "ParamRange", "RunSpec", "SearchSpec", "SpecError", "SplitSpec", "TaskRules", "TrainingSpec", "dump_spec",
           "load_spec", "parse_spec", "spec_class", "template"]


def spec_class(task: str) -> type[RunSpec]:
    """The spec schema of TASK; the error lists the available tasks."""
    from tunelab.tasks import TASKS  # the registry; task modules import only light libraries at module level

    if task not in TASKS:
        raise SpecError(f"unknown task '{task}'; available: {', '.join(TASKS)}")
    return TASKS[task].spec_class


def _closest_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Walk the schema along loc and suggest the valid key nearest to the last element."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if current else None
        annotation = field.annotation if field else None
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if current is None:
        return ""
    match = difflib.get_close_matches(str(loc[-1]), list(current.model_fields), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(current.model_fields)}"


def _format_errors(err: ValidationError, source: str, schema: type[RunSpec]) -> str:
    lines = [f"{source}: invalid spec"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key{_closest_key(schema, e['loc'])}")
        else:
            lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> RunSpec:
    """Validate a spec given as a dict; errors name each bad key and the closest valid one."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a YAML mapping, got {type(data).__name__}")
    task = data.get("task")
    if task is None:
        raise SpecError(f"{source}: invalid spec\n  task: Field required")
    try:
        schema = spec_class(str(task))
    except SpecError as err:
        raise SpecError(f"{source}: invalid spec\n  task: {err}") from None
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source, schema)) from None


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a YAML spec. Relative data paths are resolved against the spec's folder."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    spec = parse_spec(raw, str(path))
    if spec.name is None:
        spec.name = path.stem
    for field in ("train", "validation", "test"):
        value = getattr(spec.data, field)
        if value and not Path(value).is_absolute() and (path.parent / value).exists():
            setattr(spec.data, field, str((path.parent / value).resolve()))
    return spec


def dump_spec(spec: RunSpec) -> str:
    """The resolved spec as YAML, defaults filled in, as stored in the run directory."""
    data = spec.model_dump(mode="json")
    data["training"]["learning_rate"] = spec.learning_rate
    return yaml.safe_dump(data, sort_keys=False)


def _learning_rate_choices(rules: TaskRules) -> str:
    """`tunelab init`'s note on the learning rate: the task's default per method, by model width where it has
    a table (docs/defaults.md)."""
    parts = []
    for m in rules.methods:
        table = rules.learning_rate_by_width.get(m)
        if table:
            rows, lower = [], 0.0
            for bound, rate in table:
                rows.append(f"{rate:g} for width <= {bound:g}" if bound != float("inf") else f"{rate:g} above {lower:g}")
                lower = bound
            parts.append(f"{m} " + ", ".join(rows))
        else:
            parts.append(f"{m} {rules.learning_rate(m):g}")
    return "Default for this task, by method (and the base model's hidden size): " + "; ".join(parts) + "."


def _commented(model: type[BaseModel], indent: int, overrides: dict[str, Any], choices: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    pad = "  " * indent
    for name, field in model.model_fields.items():
        annotation = field.annotation
        desc = field.description or ""
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"{pad}# {desc}")
            lines.append(f"{pad}{name}:")
            lines.extend(_commented(annotation, indent + 1, overrides.get(name, {}), choices))
            continue
        value = overrides.get(name, None if field.is_required() else field.get_default(call_default_factory=True))
        if name in choices and indent == 1:  # what the task's rules say about this key
            extra = choices[name]
            desc = f"{desc} {extra}" if isinstance(extra, str) else f"{desc} One of: {', '.join(extra)} (default {extra[0]})."
        rendered = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"{pad}{rendered:<40} # {desc}")
    return lines


def template(task: str) -> str:
    """A commented spec for TASK, generated from that task's schema so it never falls out of date and shows
    only the keys the task accepts."""
    from tunelab.tasks import TASKS

    if task not in TASKS:
        raise SpecError(f"unknown task '{task}'; available: {', '.join(TASKS)}")
    task_cls = TASKS[task]
    overrides = {"task": task, "name": "my-run", **task_cls.template_values}
    rules = task_cls.spec_class.RULES
    choices: dict[str, Any] = {"method": rules.methods, "batching": rules.batchings, "metric": rules.metrics,
                               "max_length": f"Default for this task: {rules.max_length}.",
                               "learning_rate": _learning_rate_choices(rules)}
    header = [f"# tunelab run spec for {task}. Generated by `tunelab init {task}`.",
              "# Every key is optional except task and data.train; the values shown are the defaults."]
    return "\n".join(header + _commented(task_cls.spec_class, 0, overrides, choices)) + "\n"
