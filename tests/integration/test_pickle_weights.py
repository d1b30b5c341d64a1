"""Safetensors only, through the real CLI: pickle base models and adapters are refused with the file and the fix,
a hostile pickle never runs, `--trust-pickle` is the recorded escape, and `tunelab convert-weights` makes a folder
that trains, serves and exports."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import write_spec

TRAINING = {"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "early_stopping_patience": None}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`tunelab ARGS` run in this process (the CLI's own main(), so user errors exit 2 as on the command line):
    (exit code, stderr with rich's line wrapping undone). In-process, it skips a second torch import per call."""
    from tunelab import cli as tunelab_cli

    argv, sys.argv = sys.argv, ["tunelab", *args]
    try:
        tunelab_cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    return code, " ".join(capsys.readouterr().err.split())


class Payload:
    """Unpickling this creates MARKER: what a hostile pytorch_model.bin would do (with worse code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle's protocol
        return io.open, (str(self.marker), "w")


def pickle_only_copy(source: Path, dest: Path) -> Path:
    """A copy of the model folder SOURCE whose weights are a pickle pytorch_model.bin only (transformers 5 writes
    safetensors even when asked for safe_serialization=False, so the pickle is made here)."""
    shutil.copytree(source, dest)
    state = load_file(str(dest / "model.safetensors"))
    (dest / "model.safetensors").unlink()
    torch.save(state, dest / "pytorch_model.bin")
    return dest


@pytest.fixture(scope="module")
def pickled_bert(tiny_assets: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pickle_only_copy(tiny_assets["model"], tmp_path_factory.mktemp("pickled") / "bert")


def _spec(tmp_path: Path, assets: dict, base: Path) -> Path:
    return write_spec(tmp_path / "spec.yaml", {**assets, "model": base}, training=TRAINING)


def test_a_pickle_only_base_is_refused_before_any_work(pickled_bert: Path, tiny_assets: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, message = cli(capsys, "train", str(_spec(tmp_path, tiny_assets, pickled_bert)))
    assert code == 2, message
    assert f"{pickled_bert}/pytorch_model.bin" in message
    assert f"tunelab convert-weights {pickled_bert}" in message and "--trust-pickle" in message
    assert not (tmp_path / "runs").exists()  # refused at plan time: no run directory half made


def test_a_hostile_pickle_never_runs(tiny_assets: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    control = tmp_path / "control-marker"
    torch.save({"weight": Payload(control)}, tmp_path / "control.bin")
    torch.load(tmp_path / "control.bin", weights_only=False)["weight"].close()  # the payload is real: it runs
    assert control.exists()

    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_assets["model"], hostile)
    (hostile / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    torch.save({"bert.embeddings.word_embeddings.weight": Payload(marker)}, hostile / "pytorch_model.bin")
    code, message = cli(capsys, "train", str(_spec(tmp_path, tiny_assets, hostile)))
    assert code == 2 and f"{hostile}/pytorch_model.bin" in message, message
    code, message = cli(capsys, "convert-weights", str(hostile))  # the conversion reads tensors only: refused
    assert code == 2 and f"{hostile}/pytorch_model.bin: not converted" in message, message
    assert not marker.exists()
    assert not (hostile / "model.safetensors").exists()


def test_trust_pickle_trains_and_is_recorded(pickled_bert: Path, tiny_assets: dict, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tunelab.weights"):
        code, message = cli(capsys, "train", str(_spec(tmp_path, tiny_assets, pickled_bert)), "--trust-pickle",
                            "--name", "trusted")
    assert code in (0, 3), message  # trained (promoted or not is the gate's business)
    assert "warning: model.trust_pickle is on" in message
    assert any(f"{pickled_bert}/pytorch_model.bin" in r.getMessage() for r in caplog.records)  # the files, named
    run = tmp_path / "runs" / "trusted"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] in ("completed", "not-promoted")
    assert status["trust_pickle"] is True and status["trusted_pickle_files"] == [str(pickled_bert / "pytorch_model.bin")]
    assert yaml.safe_load((run / "spec.yaml").read_text())["model"]["trust_pickle"] is True
    assert (run / "model" / "model.safetensors").is_file()  # what the run writes is safetensors all the same


def test_converted_folder_trains(pickled_bert: Path, tiny_assets: dict, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    converted = tmp_path / "converted"
    code, message = cli(capsys, "convert-weights", str(pickled_bert), "--out", str(converted))
    assert code == 0, message
    assert sorted(p.name for p in converted.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(converted.glob("*.bin"))
    original = torch.load(pickled_bert / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(original[k], v) for k, v in load_file(str(converted / "model.safetensors")).items())
    code, message = cli(capsys, "train", str(_spec(tmp_path, tiny_assets, converted)), "--name", "converted")
    assert code in (0, 3), message
    assert "trust_pickle" not in message
    assert "trust_pickle" not in json.loads((tmp_path / "runs" / "converted" / "run.json").read_text())


@pytest.fixture(scope="module")
def pickled_adapter_run(tiny_llm: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LoRA chat run whose adapter was re-saved as adapter_model.bin (pickle) only."""
    from tunelab.recipes import fine_tune
    from tunelab.spec import parse_spec

    root = tmp_path_factory.mktemp("adapter")
    spec = {"task": "chat", "name": "lora", "model": {"base": str(tiny_llm["model"]), "method": "lora"},
            "data": {"train": str(tiny_llm["chat"]), "max_length": 64},
            "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2},
            "evaluation": {"generation": {"prompts": 2, "max_new_tokens": 4}}, "output": {"dir": str(root / "runs")}}
    fine_tune(parse_spec(spec, "test spec"))
    adapter = root / "runs" / "lora" / "adapter"
    torch.save(load_file(str(adapter / "adapter_model.safetensors")), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    return root / "runs" / "lora"


def test_pickle_adapters_are_refused_by_export_and_serve_until_converted(pickled_adapter_run: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tunelab.run.weights import UnsafeWeights
    from tunelab.serve import ServeSettings, create_app

    adapter = pickled_adapter_run / "adapter"
    code, message = cli(capsys, "export", str(pickled_adapter_run), "--merge", "--allow-worse")
    assert code == 2, message
    assert f"{adapter}/adapter_model.bin" in message and f"tunelab convert-weights {adapter}" in message
    assert "--trust-pickle" not in message  # that escape is for base models only
    with pytest.raises(UnsafeWeights, match="adapter_model.bin"):
        create_app([pickled_adapter_run], ServeSettings(allow_worse=True, db="none"))

    code, message = cli(capsys, "convert-weights", str(adapter))  # in place: the safetensors twin beside it
    assert code == 0, message
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_model.bin").is_file()
    code, message = cli(capsys, "export", str(pickled_adapter_run), "--merge", "--allow-worse")
    assert code == 0, message
    assert json.loads((pickled_adapter_run / "export" / "merged" / "parity.json").read_text())["mismatches"] == 0
