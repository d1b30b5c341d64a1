"""Every registered task implements the Task protocol and its family's protocol, and owns its spec schema."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.spec import SpecError, parse_spec, template
from tunelab.tasks import FAMILY_PROTOCOLS, TASKS, Task, base

SRC = Path(__file__).parents[2] / "src" / "tunelab"


def _members(protocol: type) -> set[str]:
    """The names a protocol requires: its methods and its annotated attributes (its bases' too)."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (object, Task.__mro__[-1]) or klass.__name__ in ("Protocol", "Generic"):
            continue
        names |= {n for n in vars(klass) if not n.startswith("_")}
        names |= set(getattr(klass, "__annotations__", {}))
    return names


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_implements_its_protocols(name: str) -> None:
    task_cls = TASKS[name]
    assert task_cls.name == name
    assert task_cls.family in FAMILY_PROTOCOLS, f"{name}: unknown family {task_cls.family!r}"
    spec = parse_spec(yaml.safe_load(template(name)))
    assert spec.family == task_cls.family
    task = task_cls.from_spec(spec, ["a", "b"])
    for protocol in (Task, FAMILY_PROTOCOLS[task_cls.family]):
        missing = sorted(m for m in _members(protocol) if not hasattr(task, m))
        assert not missing, f"{name} lacks {missing} of {protocol.__name__}"
        assert isinstance(task, protocol)
    for method in ("from_spec", "prepare_data", "from_saved"):
        assert inspect.ismethod(getattr(task_cls, method)), f"{name}.{method} must be a classmethod"
    assert set(task_cls.capabilities) <= {base.EVALUATE, base.PREDICT, base.EMBED, base.ONNX, base.DRIFT,
                                          base.GENERATE, base.MERGE}
    assert task_cls.routes and all(r.startswith("/v1/") for r in task_cls.routes)


@pytest.mark.parametrize("name", list(TASKS))
def test_init_shows_only_the_tasks_own_keys(name: str) -> None:
    spec = parse_spec(yaml.safe_load(template(name)))
    schema = TASKS[name].spec_class
    assert type(spec) is schema
    dumped = yaml.safe_load(template(name))
    assert set(dumped["data"]) == set(schema.model_fields["data"].annotation.model_fields)


def test_foreign_keys_are_unknown_and_name_the_closest_valid_key() -> None:
    assert "image_size" not in template("text-classification")
    assert "train_on" not in template("text-classification")
    assert "label_column" not in template("chat")
    with pytest.raises(SpecError, match=r"data.image_size: unknown key"):
        parse_spec({"task": "chat", "data": {"train": "x.jsonl", "image_size": 64}})
    with pytest.raises(SpecError, match=r"data.text_colum: unknown key; did you mean 'text_column'"):
        parse_spec({"task": "completion", "data": {"train": "x.txt", "text_colum": "body"}})
    with pytest.raises(SpecError, match=r"model.image_base: unknown key"):
        parse_spec({"task": "text-classification", "data": {"train": "x.csv"}, "model": {"image_base": "x"}})
    with pytest.raises(SpecError, match=r"task: unknown task 'summarise'; available: text-classification"):
        parse_spec({"task": "summarise", "data": {"train": "x"}})


def test_no_task_branches_outside_tasks() -> None:
    """No `hasattr(task` probing anywhere, and no module outside tasks/ names a task: a line that holds a task
    name as a string next to the word task (a comparison, a table, a default) is a branch on the task that
    belongs in the task's module. ("completion" as OpenAI's token-usage label is not a task.)"""
    names = [f'"{n}"' for n in TASKS] + [f"'{n}'" for n in TASKS]
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(SRC)
        if "hasattr(task" in text or "getattr(task" in text:
            offenders.append(f"{rel}: probes the task with hasattr/getattr")
        if rel.parts[0] == "tasks":
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if "task" in line.lower() and any(n in line for n in names):
                offenders.append(f"{rel}:{number}: names a task: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_registry_and_schemas_load_without_torch() -> None:
    code = ("import sys, tunelab.tasks, tunelab.spec; tunelab.spec.template('chat');"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name, models", [("text-classification", "transformers"), ("chat", "transformers"),
                                          ("completion", "transformers"), ("image-classification", "image")])
def test_every_method_a_spec_accepts_is_registered(name: str, models: str) -> None:
    from tunelab.train.methods import get_method

    for method in TASKS[name].spec_class.RULES.methods:
        assert get_method(method, models).name == method
