"""Use a generative run: load it, answer prompts, and export a merged model that is proven equal.

A LoRA/DoRA run keeps only its adapter (a few MB); `export_merged` folds it into the base weights and
writes a plain transformers folder, then re-answers the held-out prompts recorded at the end of
training with the folder as loaded from disk. The greedy answers must be token-for-token the same, or
the export fails loudly: a merged model that answers differently is not the model that was evaluated.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from tunelab.artifacts import atomic_dir, read_json, write_json
from tunelab.generation import generate_ids, generate_texts
from tunelab.recipe import RunError, load_run_spec


class ParityError(RuntimeError):
    """The exported model does not reproduce the run's recorded greedy answers."""


def _load_plain(folder: Path) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def _load_adapter(folder: Path) -> tuple[torch.nn.Module, Any]:
    """Base model + adapter, the base found where the adapter says it was trained from."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = read_json(folder / "adapter_config.json")
    base_path = config.get("base_model_name_or_path")
    if not base_path:
        raise RunError(f"{folder}/adapter_config.json names no base model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True, dtype=torch.float32)
    if base.get_input_embeddings().weight.shape[0] != len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(base, folder).eval(), tokenizer


def load_generator(run: str | Path) -> tuple[torch.nn.Module, Any]:
    """The run's model for generation: its merged export, its full model, or base + adapter."""
    run = Path(run)
    for folder in (run / "export" / "merged", run / "model", run):
        if (folder / "config.json").is_file():
            return _load_plain(folder)
    if (run / "adapter" / "adapter_config.json").is_file():
        return _load_adapter(run / "adapter")
    raise RunError(f"{run}: no model found (expected model/, adapter/ or export/merged/); has the run finished?")


def task_for(run: str | Path, tokenizer: Any) -> Any:
    """The run's task object (chat or completion) holding the saved tokenizer and template."""
    from tunelab.recipe_lm import build_task

    spec = load_run_spec(run)
    if not spec.generative:
        raise RunError(f"{run}: a {spec.task} run; generate and chat need a chat or completion run")
    task = build_task(spec)
    task.tokenizer = tokenizer
    return task


def generate(run: str | Path, prompts: list[str], max_new_tokens: int = 128, system: str | None = None,
             temperature: float = 0.0) -> list[dict[str, Any]]:
    """Answers for each prompt, rendered with the run's chat template (chat) or as plain text (completion)."""
    model, tokenizer = load_generator(run)
    task = task_for(run, tokenizer)
    ids = [task.prompt_ids(p, system=system) for p in prompts]
    _, texts = generate_texts(model, tokenizer, ids, max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature or 1.0)
    return [{"prompt": p, "answer": t} for p, t in zip(prompts, texts)]


def export_merged(run: str | Path, out: Path | None = None) -> dict[str, Any]:
    """Write a merged plain-transformers model and check it against the run's recorded answers.

    Returns the parity summary (also written to <out>/parity.json). Raises ParityError on a mismatch,
    after moving the folder aside to <out>.mismatch so nobody deploys it by accident.
    """
    run = Path(run)
    out = out or run / "export" / "merged"
    recorded = run / "generations.json"
    if not recorded.is_file():
        raise RunError(f"{run}: no generations.json; export needs a finished generative run")
    if (run / "adapter" / "adapter_config.json").is_file():
        model, tokenizer = _load_adapter(run / "adapter")
        merged = model.merge_and_unload()
    elif (run / "model" / "config.json").is_file():
        merged, tokenizer = _load_plain(run / "model")
    else:
        raise RunError(f"{run}: nothing to export (no adapter/ or model/)")
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    del merged
    parity = check_parity(out, recorded)
    write_json(out / "parity.json", parity)
    if parity["mismatches"]:
        bad = out.with_name(out.name + ".mismatch")
        shutil.rmtree(bad, ignore_errors=True)
        out.rename(bad)
        first = parity["first_mismatch"]
        raise ParityError(f"the exported model answers {parity['mismatches']} of {parity['prompts']} held-out prompts "
                          f"differently from the trained model (first: {first['location']}: expected "
                          f"{first['expected']!r}, got {first['got']!r}); the export was moved to {bad}")
    return parity


def _near_tie(model: torch.nn.Module, prompt: list[int], expected: list[int], stops: list[int], tol: float,
              max_new_tokens: int) -> bool:
    """True when every token of EXPECTED is the model's greedy choice up to TOL in logit (teacher-forced).

    A merged weight matrix (W + BA) rounds differently from the adapter form (Wx + BAx) in the last bit;
    where two tokens are tied to within that rounding, greedy decoding may pick either. That is not a
    different model, so it is reported as a near-tie rather than a mismatch. Anything larger is."""
    ended = stops[:1] if len(expected) < max_new_tokens else []  # it stopped by itself: the stop must be chosen too
    seq = torch.tensor([prompt + expected + ended])
    with torch.inference_mode():
        logits = model(input_ids=seq).logits[0, len(prompt) - 1:-1].float()
    targets = seq[0, len(prompt):]
    gap = logits.max(-1).values - logits.gather(-1, targets[:, None]).squeeze(-1)
    return bool((gap <= tol).all())


def check_parity(folder: Path, recorded: Path, tol: float = 1e-3) -> dict[str, Any]:
    """Re-answer the recorded prompts with the model in FOLDER (as loaded from disk) and compare token ids;
    a differing answer passes only if it is a near-tie within TOL logits at every step (see _near_tie)."""
    from tunelab.generation import stop_token_ids

    data = read_json(recorded)
    samples = data["samples"]
    model, tokenizer = _load_plain(folder)
    got = generate_ids(model, tokenizer, [s["prompt_ids"] for s in samples], data["max_new_tokens"],
                       batch_size=data.get("batch_size", 8), desc="parity check")
    differing = [i for i, (s, g) in enumerate(zip(samples, got)) if s["fine_tuned_ids"] != g]
    stops = stop_token_ids(tokenizer)
    ties = [i for i in differing if _near_tie(model, samples[i]["prompt_ids"], samples[i]["fine_tuned_ids"], stops, tol,
                                     data["max_new_tokens"])]
    mismatched = [i for i in differing if i not in ties]
    first = None
    if mismatched:
        i = mismatched[0]
        first = {"location": samples[i]["location"], "expected": samples[i]["fine_tuned"],
                 "got": tokenizer.decode(got[i], skip_special_tokens=True).strip()}
    return {"prompts": len(samples), "identical": len(samples) - len(differing), "near_ties": len(ties),
            "mismatches": len(mismatched), "tolerance_logits": tol, "first_mismatch": first, "folder": str(folder)}
