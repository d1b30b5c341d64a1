from pathlib import Path

import pytest
import torch

from tunelab.train import checkpoints as artifacts
from tunelab.run.files import atomic_dir, write_text
from tunelab.train.checkpoints import checkpoint_path, load_checkpoint, save_checkpoint


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def test_atomic_dir_failure_keeps_previous_version(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary leftovers


def test_write_text_is_atomic_replace(tmp_path: Path) -> None:
    write_text(tmp_path / "a.json", "1")
    write_text(tmp_path / "a.json", "2")
    assert (tmp_path / "a.json").read_text() == "2"
    assert len(list(tmp_path.iterdir())) == 1


def test_checkpoint_roundtrip_restores_weights_optimizer_and_state(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, "step-0000001", model, {"epoch": 1, "history": [{"epoch": 1}]}, opt)
    other = tiny_model()
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    state = load_checkpoint(checkpoint_path(tmp_path), other, other_opt)
    assert state["epoch"] == 1 and state["history"] == [{"epoch": 1}]
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert other_opt.state_dict()["state"][0]["step"] == 1


def test_kill_during_checkpoint_save_leaves_previous_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    save_checkpoint(tmp_path, "step-0000001", model, {"epoch": 1})
    original = artifacts.save_file

    def dying_save(tensors: dict, path: str) -> None:
        original(tensors, path)
        raise KeyboardInterrupt("SIGINT during save")

    monkeypatch.setattr(artifacts, "save_file", dying_save)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "step-0000002", model, {"epoch": 2})
    latest = checkpoint_path(tmp_path)
    assert latest is not None and latest.name == "step-0000001"
    fresh = tiny_model()
    assert load_checkpoint(latest, fresh)["epoch"] == 1
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


def test_old_checkpoints_pruned_but_best_kept(tmp_path: Path) -> None:
    model = tiny_model()
    save_checkpoint(tmp_path, "best-epoch-0001", model, {}, pointer="BEST")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, f"step-{step:07d}", model, {"epoch": step})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["best-epoch-0001", "step-0000003"]
