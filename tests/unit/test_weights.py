"""The safetensors-only guard for base models and adapters, and `convert_weights` (tunelab convert-weights)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.run.errors import RunError
from tunelab.run.weights import (UnsafeWeights, base_weights, check_adapter, convert_weights, pickle_only_files,
                                 safetensors_name)


def _sentence_encoder(folder: Path, dense: str) -> Path:
    """A sentence-transformers-shaped folder: safetensors at the top, a Dense module whose weights are DENSE."""
    (folder / "2_Dense").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "training_args.bin").write_bytes(b"")  # training state, never loaded: not a reason to refuse
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": ""},
                                                     {"idx": 1, "name": "2", "path": "2_Dense"}]))
    (folder / "2_Dense" / dense).write_bytes(b"")
    return folder


def test_safetensors_names_are_the_ones_loaders_look_for() -> None:
    assert safetensors_name("pytorch_model.bin") == "model.safetensors"
    assert safetensors_name("pytorch_model-00001-of-00002.bin") == "model-00001-of-00002.safetensors"
    assert safetensors_name("adapter_model.bin") == "adapter_model.safetensors"
    assert safetensors_name("diffusion_pytorch_model.bin") == "diffusion_pytorch_model.safetensors"
    assert safetensors_name("weights.pth") == "weights.safetensors"


def test_a_base_is_checked_in_every_folder_its_loaders_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    encoder = _sentence_encoder(tmp_path / "st", dense="pytorch_model.bin")
    with pytest.raises(UnsafeWeights) as refused:
        base_weights(encoder)
    message = str(refused.value)
    assert message.startswith(f"{encoder}/2_Dense/pytorch_model.bin: pickle weights")
    assert f"`tunelab convert-weights {encoder}`" in message and "--trust-pickle" in message
    with pytest.raises(UnsafeWeights) as refused:
        base_weights(encoder, training=False)  # an adapter's base at serve/export time: no escape offered
    assert "--trust-pickle" not in str(refused.value)

    with caplog.at_level(logging.WARNING, logger="tunelab.weights"):
        assert base_weights(encoder, trust_pickle=True) is None  # transformers may read pickle now
    assert [r.getMessage() for r in caplog.records if str(encoder / "2_Dense" / "pytorch_model.bin") in r.getMessage()]
    assert pickle_only_files(encoder) == [encoder / "2_Dense" / "pytorch_model.bin"]

    safe = _sentence_encoder(tmp_path / "safe", dense="model.safetensors")
    assert base_weights(safe) is True and pickle_only_files(safe) == []
    assert base_weights("some-org/some-hub-model") is True  # a hub id: transformers is told safetensors only


def test_adapters_need_their_safetensors_file(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"")
    (adapter / "tokenizer.safetensors").write_bytes(b"")  # some other safetensors file does not make it safe
    with pytest.raises(UnsafeWeights, match=f"{adapter}/adapter_model.bin: pickle weights.*convert-weights"):
        check_adapter(adapter)
    (adapter / "adapter_model.bin").unlink()
    with pytest.raises(UnsafeWeights, match="no adapter_model.safetensors"):
        check_adapter(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    check_adapter(adapter)


def test_sharded_weights_convert_and_load_with_transformers(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=16))
    folder = tmp_path / "sharded"
    model.config.save_pretrained(folder)
    state = model.state_dict()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, folder / shard)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.pt").write_bytes(b"not a state dict")  # training state: left alone

    written = convert_weights(folder)
    assert [dest.name for _, dest in written] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    loaded = BertModel.from_pretrained(folder, use_safetensors=True)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
    with pytest.raises(RunError, match="no pickle weights without a safetensors twin"):
        convert_weights(folder)  # converted already: nothing left to do, and nothing overwritten


def test_tied_tensors_are_stored_each_on_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "tied"
    folder.mkdir()
    embedding = torch.randn(5, 3)
    torch.save({"embed.weight": embedding, "lm_head.weight": embedding}, folder / "pytorch_model.bin")
    convert_weights(folder, out=tmp_path / "out")
    tensors = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(tensors["embed.weight"], embedding) and torch.equal(tensors["lm_head.weight"], embedding)
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()


def test_anything_but_a_state_dict_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    torch.save({"a": torch.ones(2)}, folder / "good.pt")
    torch.save([torch.ones(2)], folder / "list.pt")
    with pytest.raises(UnsafeWeights, match=f"{folder}/list.pt: not converted: it holds list"):
        convert_weights(folder)
    assert not list(folder.glob("*.safetensors"))  # every file is read before any is written
    with pytest.raises(RunError, match="inside"):
        convert_weights(folder, out=folder / "converted")
    with pytest.raises(RunError, match="no such folder"):
        convert_weights(tmp_path / "missing")
