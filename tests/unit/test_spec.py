from pathlib import Path

import pytest
import yaml

from tunelab.spec import SpecError, dump_spec, load_spec, parse_spec, template

MINIMAL = {"task": "text-classification", "data": {"train": "bbc-news"}}


def test_defaults_encode_good_practice() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.learning_rate == 2e-5
    assert spec.training.warmup == 0.1
    assert spec.training.weight_decay == 0.01
    assert spec.evaluation.metric == "macro_f1"
    assert spec.training.early_stopping_patience == 2
    assert spec.training.seed == 42
    assert spec.training.batching == "length-mixed"


def test_lora_default_learning_rate() -> None:
    spec = parse_spec({**MINIMAL, "model": {"method": "lora"}})
    assert spec.learning_rate == 2e-4
    assert parse_spec({**MINIMAL, "model": {"method": "lora"}, "training": {"learning_rate": 1e-3}}).learning_rate == 1e-3


@pytest.mark.parametrize("bad, expected", [
    ({"trainng": {}}, "did you mean 'training'"),
    ({"training": {"learnin_rate": 1e-4}}, "training.learnin_rate: unknown key; did you mean 'learning_rate'"),
    ({"data": {"train": "x", "text_colum": "t"}}, "did you mean 'text_column'"),
    ({"model": {"lora": {"rank": 8}}}, "model.lora.rank: unknown key"),
])
def test_unknown_key_names_closest_valid_key(bad: dict, expected: str) -> None:
    data = {**MINIMAL, **bad}
    with pytest.raises(SpecError) as err:
        parse_spec(data, "my.yaml")
    assert expected in str(err.value)
    assert "my.yaml" in str(err.value)


def test_bad_values_are_named() -> None:
    with pytest.raises(SpecError, match="training.epochs"):
        parse_spec({**MINIMAL, "training": {"epochs": 0}})
    with pytest.raises(SpecError, match="model.method"):
        parse_spec({**MINIMAL, "model": {"method": "qlora-magic"}})
    with pytest.raises(SpecError, match="at least 10% for training"):
        parse_spec({**MINIMAL, "data": {"train": "x", "split": {"validation": 0.5, "test": 0.45}}})


def test_missing_required_fields() -> None:
    with pytest.raises(SpecError, match="data: Field required"):
        parse_spec({"task": "text-classification"})


def test_load_spec_resolves_relative_paths_and_name(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "data": {"train": "train.csv"}}))
    spec = load_spec(path)
    assert spec.name == "exp"
    assert Path(spec.data.train) == (tmp_path / "train.csv").resolve()


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("task: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(path)


def test_init_template_is_commented_and_valid(tmp_path: Path) -> None:
    text = template("text-classification")
    assert "# Peak learning rate" in text
    assert "learning_rate" in text and "early_stopping_patience" in text
    spec = parse_spec(yaml.safe_load(text))
    assert spec.data.train == "bbc-news"
    assert spec.learning_rate == 2e-5


def test_init_unknown_task() -> None:
    with pytest.raises(SpecError, match="available: text-classification"):
        template("object-detection")


def test_dump_spec_roundtrip() -> None:
    spec = parse_spec(MINIMAL)
    again = parse_spec(yaml.safe_load(dump_spec(spec)))
    assert again.learning_rate == spec.learning_rate
    assert again.model_dump() == {**spec.model_dump(), "training": {**spec.model_dump()["training"], "learning_rate": 2e-5}}


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("examples/**/*.yaml")), ids=str)
def test_every_shipped_example_spec_validates(path: Path) -> None:
    spec = load_spec(path)
    assert spec.task


def test_generative_tasks_get_llm_defaults() -> None:
    spec = parse_spec({"task": "chat", "data": {"train": "construction-faq"}})
    assert spec.model.method == "lora" and spec.learning_rate == 2e-4
    assert spec.training.batching == "padding-free"
    assert spec.evaluation.metric == "loss" and spec.lower_is_better
    assert spec.data.max_length == 1024 and spec.data.train_on == "all-assistant"
    classifier = parse_spec(MINIMAL)
    assert classifier.model.method == "full" and classifier.training.batching == "length-mixed"
    assert classifier.evaluation.metric == "macro_f1" and classifier.data.max_length == 256 and not classifier.lower_is_better


@pytest.mark.parametrize("bad, expected", [
    ({"task": "chat", "training": {"batching": "length-mixed"}}, "does not apply to chat; use one of padding-free"),
    ({"task": "chat", "evaluation": {"metric": "macro_f1"}}, "use one of loss, rouge_l"),
    ({"task": "text-classification", "training": {"batching": "packing"}}, "use one of length-mixed, random"),
    ({"task": "text-classification", "model": {"method": "qlora"}}, "use one of full, lora"),
    ({"task": "chat", "model": {"method": "linear-probe"}}, "use one of lora, dora, full, qlora"),
    ({"task": "chat", "data": {"train_on": "assistant"}}, "data.train_on"),
])
def test_settings_that_do_not_fit_the_task_are_refused(bad: dict, expected: str) -> None:
    raw = {"data": {"train": "x.jsonl"}, **bad}
    raw["data"] = {"train": "x.jsonl", **bad.get("data", {})}
    with pytest.raises(SpecError, match=expected):
        parse_spec(raw)


@pytest.mark.parametrize("task", ["chat", "completion"])
def test_init_templates_for_generative_tasks_validate(task: str) -> None:
    spec = parse_spec(yaml.safe_load(template(task)))
    assert spec.task == task and spec.model.base == "SmolLM2-135M-Instruct" and spec.model.method == "lora"


def test_generative_dump_roundtrip_keeps_filled_defaults() -> None:
    spec = parse_spec({"task": "completion", "data": {"train": "notes.txt"}})
    again = parse_spec(yaml.safe_load(dump_spec(spec)))
    assert again.model_dump() == {**spec.model_dump(), "training": {**spec.model_dump()["training"], "learning_rate": 2e-4}}


@pytest.mark.parametrize("task, base", [("image-classification", "efficientnet-lite0"),
                                        ("text-image-classification", "all-MiniLM-L6-v2")])
def test_init_templates_for_image_tasks_validate(task: str, base: str) -> None:
    spec = parse_spec(yaml.safe_load(template(task)))
    assert spec.task == task and spec.model.base == base and spec.model.method == "full"
    assert spec.learning_rate == 3e-4 and spec.model.image_base == "efficientnet-lite0"


def test_image_strategies_are_methods_of_image_tasks_only() -> None:
    spec = parse_spec({"task": "image-classification", "model": {"method": "linear-probe"}, "data": {"train": "digits"}})
    assert spec.learning_rate == 1e-3
    with pytest.raises(SpecError, match="does not apply to text-classification"):
        parse_spec({"task": "text-classification", "model": {"method": "gradual-unfreeze"}, "data": {"train": "x.csv"}})
