"""The generative verbs through the real CLI: data preview, train, export --merge, generate, chat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import tunelab


def _spec(tmp_path: Path, llm: dict, **overrides) -> Path:
    spec = {"task": "chat", "model": {"base": str(llm["model"])}, "data": {"train": str(llm["chat"]), "max_length": 64},
            "training": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-2},
            "evaluation": {"generation": {"prompts": 4, "max_new_tokens": 8}}, "output": {"dir": str(tmp_path / "runs")}}
    for section, values in overrides.items():
        spec[section] = {**spec.get(section, {}), **values}
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_data_preview_marks_exactly_the_assistant_tokens(tiny_llm: dict, tmp_path: Path) -> None:
    res = tunelab("data", "preview", str(_spec(tmp_path, tiny_llm)), "-n", "2", "--no-color")
    assert res.returncode == 0, res.stderr
    marked = [seg.split("⟧")[0] for seg in res.stdout.split("⟦")[1:]]
    assert marked and all("<|im_end|>" in m for m in marked)
    assert any(m.startswith("the city is") or m.startswith("again") for m in marked)
    assert "user" not in "".join(marked) and "what is the city" not in "".join(marked)
    assert "tokens:" in res.stdout and "trained" in res.stdout


def test_train_export_generate_chat(tiny_llm: dict, tmp_path: Path) -> None:
    spec = _spec(tmp_path, tiny_llm)
    res = tunelab("train", str(spec), "--name", "cli-chat")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "cli-chat"
    assert "perplexity" in res.stdout and "rouge_l" in res.stdout
    report = (run / "report.html").read_text()
    assert 'id="samples"' in report and 'id="truncation"' in report
    assert json.loads((run / "metrics.json").read_text())["fine_tuned"]["test"]["prompts"] > 0

    res = tunelab("export", str(run), "--merge")
    assert res.returncode == 0, res.stderr[-3000:]
    parity = json.loads((run / "export" / "merged" / "parity.json").read_text())
    assert parity["mismatches"] == 0 and parity["identical"] + parity["near_ties"] == parity["prompts"] > 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "export" / "merged")  # plain transformers, no tunelab
    assert AutoTokenizer.from_pretrained(run / "export" / "merged").chat_template
    assert not hasattr(model, "peft_config")

    res = tunelab("generate", str(run), "--prompt", "what is the city number 1?", "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["prompt"] == "what is the city number 1?" and isinstance(row["answer"], str)

    import subprocess
    import sys

    chat = subprocess.run([sys.executable, "-m", "tunelab.cli", "chat", str(run), "--max-new-tokens", "6"],
                          input="what is the city number 2?\n/reset\nhello\n/exit\n", capture_output=True, text=True,
                          timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.count("model> ") == 2


def test_export_refuses_a_model_that_answers_differently(tiny_llm: dict, tmp_path: Path) -> None:
    spec = _spec(tmp_path, tiny_llm, training={"epochs": 1})
    assert tunelab("train", str(spec), "--name", "tamper").returncode == 0
    run = tmp_path / "runs" / "tamper"
    recorded = json.loads((run / "generations.json").read_text())
    recorded["samples"][0]["fine_tuned_ids"] = [7, 7, 7]  # pretend training had answered something else
    (run / "generations.json").write_text(json.dumps(recorded))
    res = tunelab("export", str(run), "--merge")
    assert res.returncode == 1
    assert "parity check failed" in res.stderr
    assert not (run / "export" / "merged").exists() and (run / "export" / "merged.mismatch").is_dir()


def test_qlora_without_cuda_is_refused_before_any_work(tiny_llm: dict, tmp_path: Path) -> None:
    spec = _spec(tmp_path, tiny_llm, model={"method": "qlora"})
    res = tunelab("train", str(spec))
    assert res.returncode == 2
    assert "qlora needs a CUDA GPU" in res.stderr and "method: lora" in res.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method, batching", [("dora", "padded"), ("lora", "packing")])
def test_other_methods_and_batching_train(tiny_llm: dict, tmp_path: Path, method: str, batching: str) -> None:
    spec = _spec(tmp_path, tiny_llm, model={"method": method}, training={"epochs": 2, "batching": batching},
                 evaluation={"generation": {"prompts": 0}})
    res = tunelab("train", str(spec), "--name", f"{method}-{batching}")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / f"{method}-{batching}"
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_dora"] is (method == "dora")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fine_tuned"]["test"]["loss"] < metrics["baseline"]["test"]["loss"]
