"""Export a generative run as one merged model, and prove it equal.

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

from tunelab.lm.generation import generate_ids
from tunelab.lm.loading import load_adapter, load_plain
from tunelab.run import RunDir, RunError
from tunelab.run.files import atomic_dir, read_json, write_json


class ParityError(RuntimeError):
    """The exported model does not reproduce the run's recorded greedy answers."""


def export_merged(run: str | Path, out: Path | None = None) -> dict[str, Any]:
    """Write a merged plain-transformers model and check it against the run's recorded answers.

    Returns the parity summary (also written to <out>/parity.json). Raises ParityError on a mismatch,
    after moving the folder aside to <out>.mismatch so nobody deploys it by accident.
    """
    run_dir = RunDir(run)
    run = run_dir.path
    out = out or run_dir.exports / "merged"
    recorded = run_dir.file(RunDir.GENERATIONS)
    if not recorded.is_file():
        raise RunError(f"{run}: no generations.json; export needs a finished generative run")
    if (run_dir.adapter / "adapter_config.json").is_file():
        model, tokenizer = load_adapter(run_dir.adapter)
        merged = model.merge_and_unload()
    elif (run_dir.model / "config.json").is_file():
        merged, tokenizer = load_plain(run_dir.model)
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
    from tunelab.lm.generation import stop_token_ids

    data = read_json(recorded)
    samples = data["samples"]
    model, tokenizer = load_plain(folder)
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
