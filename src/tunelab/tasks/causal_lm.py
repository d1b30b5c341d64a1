"""Generative tasks on GPT/Llama-family models: `chat` (instructions, multi-turn) and `completion`.

Both train a causal LM with next-token loss. They differ in what an example is and which tokens carry
the loss: a chat example is one conversation rendered with the model's own chat template, with the
loss on assistant turns only (by default); a completion example is a slice of a plain document, with
the loss on every token. Held-out prompts (the conversation up to its last assistant turn, or the
first part of a document) are answered greedily by the base and the fine-tuned model for the
before/after comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tunelab.data.doctor import Finding, column
from tunelab.lm_batching import IGNORE, BinBatchSampler, LMCollator, lm_loss, pack, training_attention
from tunelab.tasks import register_task
from tunelab.tasks.chat_format import ensure_chat_template, prompt_and_reference, render_chat, render_prompt


@dataclass
class LMEncoded(torch.utils.data.Dataset):
    """Tokenised examples ({input_ids, labels}) and the truncation figures for the report."""

    features: list[dict[str, list[int]]]
    locations: list[str]
    truncated: list[str] = field(default_factory=list)  # locations of examples cut by max_length
    tokens_cut: int = 0
    untrainable: list[str] = field(default_factory=list)  # locations left with no trained token

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for t in f["labels"][1:] if t != IGNORE) for f in self.features)


class CausalLMTask:
    """What the chat and completion tasks share: model loading, batching, loss, evaluation."""

    generative = True
    metric_names = ("loss", "perplexity")

    def __init__(self, max_length: int, batching: str = "padding-free", train_on: str = "all-assistant",
                 chat_template: str | None = None) -> None:
        self.max_length, self.batching, self.train_on, self.chat_template = max_length, batching, train_on, chat_template
        self.tokenizer: Any = None
        self.added_tokens = 0

    # -- model ------------------------------------------------------------------------------------
    def load_tokenizer(self, folder: str) -> Any:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.prepare_tokenizer()
        if self.tokenizer.pad_token_id is None:  # padded batches and batched generation need one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.tokenizer

    def prepare_tokenizer(self) -> None:
        """Chat needs a template; completion does not."""

    def load_model(self, folder: str, method: str = "lora") -> torch.nn.Module:
        """The base causal LM, with attention that keeps concatenated examples apart (see lm_batching)."""
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"attn_implementation": training_attention()}
        if method == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
            kwargs["dtype"] = torch.bfloat16
        elif torch.cuda.is_available():
            kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        else:
            kwargs["dtype"] = torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        if self.added_tokens:
            model.resize_token_embeddings(len(self.tokenizer))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def peft_task_type(self) -> str:
        return "CAUSAL_LM"

    # -- batching ---------------------------------------------------------------------------------
    def train_loader(self, train: LMEncoded, batch_size: int, seed: int) -> tuple[DataLoader, Any]:
        """(loader, sampler) for training in the spec's batching mode."""
        collate = LMCollator(self.batching, self.tokenizer.pad_token_id)
        items: Any = train
        if self.batching == "packing":
            items = [[train[i] for i in bin_] for bin_ in pack(train.lengths, self.max_length, seed)]
        sampler = BinBatchSampler(len(items), batch_size, seed)
        return DataLoader(items, batch_sampler=sampler, collate_fn=collate), sampler

    def step_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return lm_loss(model, batch)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate_loss(self, model: torch.nn.Module, encoded: LMEncoded, batch_size: int, desc: str = "validation",
                      show: bool = True) -> dict[str, Any]:
        """Token-weighted mean loss over every trained token of a split, and its perplexity."""
        collate = LMCollator("padding-free" if self.batching != "padded" else "padded", self.tokenizer.pad_token_id)
        order = np.argsort(encoded.lengths, kind="stable").tolist()
        device = next(model.parameters()).device
        total, count = 0.0, 0
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            for idx in tqdm(batches, desc=desc, leave=False, disable=not show or len(batches) < 3):
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in
                         collate([encoded[i] for i in idx]).items()}
                loss, n = lm_loss(model, batch)
                total += float(loss) * n
                count += n
        model.train(was_training)
        mean = total / count if count else float("nan")
        return {"loss": mean, "perplexity": float(np.exp(min(mean, 50.0))), "tokens": count, "n": len(encoded)}


@register_task("chat")
class ChatTask(CausalLMTask):
    """Instruction and multi-turn chat: the model's chat template, loss on assistant turns."""

    def prepare_tokenizer(self) -> None:
        self.added_tokens = ensure_chat_template(self.tokenizer, self.chat_template)

    def encode(self, ds: datasets.Dataset) -> LMEncoded:
        features, locations, truncated, untrainable, cut = [], [], [], [], 0
        for messages, loc in zip(column(ds, "messages"), column(ds, "location")):
            r = render_chat(self.tokenizer, messages, train_on=self.train_on, max_length=self.max_length)
            if r.truncated:
                truncated.append(loc)
                cut += r.truncated
            if not any(t != IGNORE for t in r.labels[1:]):  # reported by truncation_findings, not kept
                untrainable.append(loc)
                continue
            features.append({"input_ids": r.input_ids, "labels": r.labels})
            locations.append(loc)
        return LMEncoded(features, locations, truncated, cut, untrainable)

    def prompts(self, ds: datasets.Dataset, limit: int) -> list[dict[str, Any]]:
        """Held-out prompts: each conversation up to its last assistant turn, and that turn as reference."""
        out = []
        for messages, loc in zip(column(ds, "messages"), column(ds, "location")):
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
            if last == 0:  # no earlier context to prompt with
                continue
            context, reference = prompt_and_reference(messages[:last + 1])
            ids = render_prompt(self.tokenizer, context)[-self.max_length:]
            out.append({"location": loc, "messages": context, "prompt_ids": ids, "reference": reference})
            if len(out) >= limit:
                break
        return out

    def prompt_ids(self, text: str, system: str | None = None, history: list[dict[str, str]] | None = None) -> list[int]:
        """A user message (with optional system prompt and earlier turns) rendered exactly as in training."""
        messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
        return render_prompt(self.tokenizer, messages + [{"role": "user", "content": text}])


@register_task("completion")
class CompletionTask(CausalLMTask):
    """Plain-text continuation: documents cut into max_length windows, loss on every token."""

    def encode(self, ds: datasets.Dataset) -> LMEncoded:
        features, locations = [], []
        eos = self.tokenizer.eos_token_id
        for text, loc in zip(column(ds, "text"), column(ds, "location")):
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if eos is not None and (not ids or ids[-1] != eos):
                ids = ids + [eos]
            # long documents become several windows rather than being cut: nothing is thrown away
            for start in range(0, max(len(ids), 1), self.max_length):
                window = ids[start:start + self.max_length]
                if len(window) > 1:
                    features.append({"input_ids": window, "labels": list(window)})
                    locations.append(loc if start == 0 else f"{loc} (tokens {start}+)")
        return LMEncoded(features, locations)

    def prompts(self, ds: datasets.Dataset, limit: int, max_new_tokens: int = 64) -> list[dict[str, Any]]:
        """The first part of each held-out document as prompt, the next tokens as reference."""
        out = []
        for text, loc in zip(column(ds, "text"), column(ds, "location")):
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if len(ids) < 4:
                continue
            cut = min(len(ids) // 2, self.max_length - max_new_tokens) or 1
            out.append({"location": loc, "prompt_ids": ids[:cut],
                        "reference": self.tokenizer.decode(ids[cut:cut + max_new_tokens], skip_special_tokens=True).strip()})
            if len(out) >= limit:
                break
        return out

    def prompt_ids(self, text: str, system: str | None = None, history: Any = None) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]


def truncation_findings(encoded: dict[str, LMEncoded], max_length: int) -> list[Finding]:
    """The truncation report: how many examples max_length cuts, and which ones it leaves untrainable."""
    findings = []
    cut = {name: e for name, e in encoded.items() if e.truncated}
    if cut:
        n = sum(len(e.truncated) for e in cut.values())
        tokens = sum(e.tokens_cut for e in cut.values())
        findings.append(Finding("truncated", "warning",
                                f"{n} example(s) are longer than max_length={max_length}; {tokens} token(s) cut from "
                                "their ends (" + ", ".join(f"{k} {len(e.truncated)}" for k, e in cut.items()) + ")",
                                n, "raise data.max_length, or shorten those conversations",
                                [loc for e in cut.values() for loc in e.truncated][:10],
                                {"by_split": {k: len(e.truncated) for k, e in cut.items()}, "tokens_cut": tokens}))
    lost = [loc for e in encoded.values() for loc in e.untrainable]
    if lost:
        findings.append(Finding("no-trained-tokens", "warning",
                                f"{len(lost)} example(s) have no trained token left after truncation: they teach "
                                "nothing and are skipped", len(lost), "raise data.max_length", lost[:10]))
    return findings
