"""Load a generative run's model: its merged export, its full model, or the base model plus its adapter.

Safetensors only (a folder, adapter or adapter's base whose weights are pickle is refused, naming the file and
the conversion command); the adapter's base is found where the adapter says it was trained from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tunelab.run import RunDir

from tunelab.run.errors import RunError
from tunelab.run.files import read_json
from tunelab.run.weights import base_weights, check_adapter, check_safetensors


def load_plain(folder: Path) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_safetensors(folder, depth=0)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def load_adapter(folder: Path) -> tuple[torch.nn.Module, Any]:
    """Base model + adapter, the base found where the adapter says it was trained from."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = read_json(folder / "adapter_config.json")
    base_path = config.get("base_model_name_or_path")
    if not base_path:
        raise RunError(f"{folder}/adapter_config.json names no base model")
    check_adapter(folder)
    base_weights(base_path, training=False)  # the base too, never trusted here (serve, export, generate)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True, dtype=torch.float32)
    if base.get_input_embeddings().weight.shape[0] != len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(base, folder).eval(), tokenizer


def load_generator(run_dir: RunDir) -> tuple[torch.nn.Module, Any]:
    """The run's model for generation: its merged export, its full model, or base + adapter."""
    run = run_dir.path
    for folder in (run_dir.exports / "merged", run_dir.model, run):
        if (folder / "config.json").is_file():
            return load_plain(folder)
    if (run_dir.adapter / "adapter_config.json").is_file():
        return load_adapter(run_dir.adapter)
    raise RunError(f"{run}: no model found (expected model/, adapter/ or export/merged/); has the run finished?")
