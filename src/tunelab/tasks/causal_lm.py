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
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from tunelab.lm.chat_format import IGNORE_INDEX as IGNORE
from tunelab.lm.chat_format import ensure_chat_template, prompt_and_reference, render_chat, render_prompt
from tunelab.spec.schema import ModelSpec, RunSpec, TaskRules
from tunelab.tasks import base
from tunelab.tasks.base import register_task

if TYPE_CHECKING:
    from tunelab.run import RunDir
from tunelab.tasks.sections import ChatData, CompletionData, LMEvaluation, LMTraining

LM_RULES = dict(methods=("lora", "dora", "full", "qlora"), batchings=("padding-free", "packing", "padded"),
                metrics=("loss", "rouge_l", "token_f1", "exact_match"), max_length=1024,
                learning_rates={"full": 2e-5, "lora": 2e-4, "dora": 2e-4, "qlora": 2e-4})


class ChatSpec(RunSpec):
    RULES: ClassVar[TaskRules] = TaskRules(**LM_RULES)
    FAMILY: ClassVar[str] = base.CAUSAL_LM

    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model (a causal LM) and adaptation method.")
    data: ChatData = Field(..., description="Where the conversations come from and how to read them.")
    training: LMTraining = Field(default_factory=LMTraining, description="Optimisation settings.")
    evaluation: LMEvaluation = Field(default_factory=LMEvaluation, description="How models are scored.")


class CompletionSpec(ChatSpec):
    data: CompletionData = Field(..., description="Where the documents come from and how to read them.")


@dataclass
class LMEncoded:
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


class LMCore:
    """What the chat and completion tasks share, composed into each: tokenizer, model loading (attention that
    keeps concatenated examples apart), batching, loss, held-out loss, saving and loading."""

    def __init__(self, max_length: int, batching: str = "padding-free", method: str = "lora",
                 trust_pickle: bool = False) -> None:
        self.max_length, self.batching, self.method = max_length, batching, method
        self.trust_pickle = trust_pickle  # model.trust_pickle: the base may be read from pickle weights
        self.tokenizer: Any = None
        self.added_tokens = 0

    def load_tokenizer(self, folder: str, chat_template: str | None = None, chat: bool = False) -> Any:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if chat:  # chat needs a template; completion does not
            self.added_tokens = ensure_chat_template(self.tokenizer, chat_template)
        if self.tokenizer.pad_token_id is None:  # padded batches and batched generation need one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.tokenizer

    def load_model(self, folder: str) -> Any:
        """The base causal LM, with attention that keeps concatenated examples apart (see lm/batching.py)."""
        import torch
        from transformers import AutoModelForCausalLM

        from tunelab.lm.batching import training_attention
        from tunelab.run.weights import base_weights

        kwargs: dict[str, Any] = {"attn_implementation": training_attention(),
                                  "use_safetensors": base_weights(folder, self.trust_pickle)}
        if self.method == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        kwargs["dtype"] = self.training_dtype("cuda" if bf16 else "cpu")
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        if self.added_tokens:
            model.resize_token_embeddings(len(self.tokenizer))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def training_dtype(self, device_type: str) -> Any:
        """bfloat16 on a GPU (assumed bf16-capable: Ampere or later) and for QLoRA's compute, float32 on a CPU:
        the weights are loaded in it and trained in it (no autocast, so no fp32 master copy)."""
        import torch

        return torch.bfloat16 if self.method == "qlora" or device_type == "cuda" else torch.float32

    def empty_model(self, folder: str, device_type: str) -> Any:
        """load_model's model on the meta device (config only), in the dtype it would train in on DEVICE_TYPE,
        with the embeddings grown for added chat tokens. QLoRA's 4-bit layers cannot exist on the meta device:
        they are left in the compute dtype and the planner counts them at the method's bits per weight."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=self.training_dtype(device_type))
            if self.added_tokens:
                model.resize_token_embeddings(len(self.tokenizer))
        return model

    def train_loader(self, train: LMEncoded, batch_size: int, seed: int) -> tuple[Any, Any]:
        """(loader, sampler) for training in the spec's batching mode."""
        from torch.utils.data import DataLoader

        from tunelab.lm.batching import BinBatchSampler, LMCollator, pack

        collate = LMCollator(self.batching, self.tokenizer.pad_token_id)
        items: Any = train
        if self.batching == "packing":
            items = [[train[i] for i in bin_] for bin_ in pack(train.lengths, self.max_length, seed)]
        sampler = BinBatchSampler(len(items), batch_size, seed)
        return DataLoader(items, batch_sampler=sampler, collate_fn=collate), sampler

    def collator(self) -> Any:
        from tunelab.lm.batching import LMCollator

        return LMCollator("padding-free" if self.batching != "padded" else "padded", self.tokenizer.pad_token_id)

    def evaluate_loss(self, model: Any, encoded: LMEncoded, batch_size: int, desc: str = "validation",
                      show: bool = True) -> dict[str, Any]:
        """Token-weighted mean loss over every trained token of a split, and its perplexity."""
        import torch
        from tqdm.auto import tqdm

        from tunelab.lm.batching import lm_loss

        collate = self.collator()
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

    def save(self, model: Any, run_dir: RunDir) -> None:
        """adapter/ (peft runs: the adapter and the tokenizer with its chat template) or model/ (full runs).

        The merged model of an adapter run is made by `tunelab export RUN --merge`, which also proves that
        the merged weights give the same greedy answers."""
        from tunelab.run.files import atomic_dir
        from tunelab.train import methods

        model.config.use_cache = True
        if methods.is_peft(model):
            with atomic_dir(run_dir.adapter) as tmp:
                model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            return
        with atomic_dir(run_dir.model) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)


class _LMTask:
    """The members of the Task protocol that chat and completion answer the same way, each a one-line
    delegation to the composed LMCore (kept as a mixin of one-liners, not a base with behaviour)."""

    family = base.CAUSAL_LM
    library = "transformers"
    pipeline_tag = "text-generation"
    input_kind = "text"
    capabilities = frozenset({base.GENERATE, base.MERGE})
    checkpoint_everything = False
    metric_names = ("loss", "perplexity")
    lm: LMCore

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.lm.tokenizer = value

    @property
    def max_length(self) -> int:
        return self.lm.max_length

    def load_model(self, folder: str) -> Any:
        return self.lm.load_model(folder)

    def empty_model(self, folder: str, device_type: str) -> Any:
        return self.lm.empty_model(folder, device_type)

    def apply_method(self, model: Any, spec: Any) -> Any:
        from tunelab.train import methods

        return methods.apply(model, spec, peft_task_type="CAUSAL_LM")

    def param_groups(self, model: Any, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        from tunelab.train.methods import get_method

        return get_method(self.lm.method).groups(model, lr, weight_decay)

    def on_epoch_start(self, model: Any, epoch: int, first_batch: int = 0) -> None:
        """Nothing changes between epochs."""

    def collator(self) -> Any:
        return self.lm.collator()

    def train_loader(self, encoded: LMEncoded, spec: Any) -> tuple[Any, Any]:
        return self.lm.train_loader(encoded, spec.training.batch_size, spec.training.seed)

    def training_step(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        from tunelab.lm.batching import lm_loss

        loss, _ = lm_loss(model, batch)
        return loss, None

    def train_metrics(self, seen: list[Any]) -> dict[str, Any]:
        return {}

    def evaluate_loss(self, model: Any, encoded: LMEncoded, batch_size: int, desc: str = "validation",
                      show: bool = True) -> dict[str, Any]:
        return self.lm.evaluate_loss(model, encoded, batch_size, desc, show)

    def save(self, model: Any, run_dir: RunDir) -> None:
        self.lm.save(model, run_dir)

    @classmethod
    def from_saved(cls, run_dir: RunDir, spec: Any) -> tuple[Any, Any]:
        """The run's model for generation (its merged export, its full model, or base + adapter) and the
        task holding the saved tokenizer and chat template."""
        from tunelab.lm.loading import load_generator

        model, tokenizer = load_generator(run_dir)
        task = cls.from_spec(spec)
        task.tokenizer = tokenizer
        return task, model


@register_task("chat")
class ChatTask(_LMTask):
    """Instruction and multi-turn chat: the model's chat template, loss on assistant turns."""

    spec_class = ChatSpec
    template_values: ClassVar[dict[str, Any]] = {"data": {"train": "construction-faq"},
                                                 "model": {"base": "SmolLM2-135M-Instruct"}}
    input_kind = "messages"
    routes = ("/v1/chat/completions",)

    def __init__(self, max_length: int, batching: str = "padding-free", train_on: str = "all-assistant",
                 chat_template: str | None = None, method: str = "lora", trust_pickle: bool = False) -> None:
        self.lm = LMCore(max_length, batching, method, trust_pickle)
        self.train_on, self.chat_template = train_on, chat_template

    @classmethod
    def from_spec(cls, spec: Any, labels: list[str] | None = None) -> "ChatTask":
        return cls(spec.data.max_length, spec.training.batching, spec.data.train_on, spec.data.chat_template,
                   spec.model.method, spec.model.trust_pickle)

    @classmethod
    def prepare_data(cls, spec: Any, base: str, force: bool, tokenizer: Any = None) -> Any:
        from tunelab.data.lm_data import prepare_chat

        return prepare_chat(spec.data, spec.training.seed, force, tokenizer=tokenizer)

    def load_tokenizer(self, folder: str) -> Any:
        return self.lm.load_tokenizer(folder, self.chat_template, chat=True)

    def encode(self, ds: Any, with_labels: bool = True) -> LMEncoded:
        from tunelab.data.doctor import column

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

    def prompts(self, ds: Any, spec: Any) -> list[dict[str, Any]]:
        """Held-out prompts: each conversation up to its last assistant turn, and that turn as reference."""
        from tunelab.data.doctor import column

        limit = spec.evaluation.generation.prompts
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

    def in_context_prompts(self, train: Any, prompts: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
        """Each held-out conversation preceded by K whole training conversations as earlier turns."""
        from tunelab.data.doctor import column
        from tunelab.lm.few_shot import draw_shots, fitted, with_shots

        conversations = column(train, "messages")
        shots = [conversations[i] for i in draw_shots(len(conversations), k, seed)]
        out = []
        for p in prompts:
            ids, kept = fitted(lambda s, p=p: render_prompt(self.tokenizer, with_shots(s, p["messages"])), shots,
                               self.max_length)
            out.append({**p, "prompt_ids": ids, "shots": kept})
        return out

    def preview(self, tokenizer: Any, row: dict[str, Any], spec: Any) -> Any:
        return render_chat(tokenizer, row["messages"], spec.data.train_on, spec.data.max_length)

    def describe_loss(self, spec: Any) -> str:
        return spec.data.train_on


@register_task("completion")
class CompletionTask(_LMTask):
    """Plain-text continuation: documents cut into max_length windows, loss on every token."""

    spec_class = CompletionSpec
    template_values: ClassVar[dict[str, Any]] = {"data": {"train": "my-texts.txt"},
                                                 "model": {"base": "SmolLM2-135M-Instruct"}}
    routes = ("/v1/completions",)

    def __init__(self, max_length: int, batching: str = "padding-free", method: str = "lora",
                 trust_pickle: bool = False) -> None:
        self.lm = LMCore(max_length, batching, method, trust_pickle)

    @classmethod
    def from_spec(cls, spec: Any, labels: list[str] | None = None) -> "CompletionTask":
        return cls(spec.data.max_length, spec.training.batching, spec.model.method, spec.model.trust_pickle)

    @classmethod
    def prepare_data(cls, spec: Any, base: str, force: bool, tokenizer: Any = None) -> Any:
        from tunelab.data.lm_data import prepare_completion

        return prepare_completion(spec.data, spec.training.seed, force, tokenizer=tokenizer)

    def load_tokenizer(self, folder: str) -> Any:
        return self.lm.load_tokenizer(folder, chat=False)

    def encode(self, ds: Any, with_labels: bool = True) -> LMEncoded:
        from tunelab.data.doctor import column

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

    def prompts(self, ds: Any, spec: Any) -> list[dict[str, Any]]:
        """The first part of each held-out document as prompt, the next tokens as reference."""
        from tunelab.data.doctor import column

        limit, max_new_tokens = spec.evaluation.generation.prompts, spec.evaluation.generation.max_new_tokens
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

    def in_context_prompts(self, train: Any, prompts: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
        """Each held-out document's opening preceded by K whole training documents, each ended by EOS."""
        from tunelab.data.doctor import column
        from tunelab.lm.few_shot import draw_shots, fitted, joined_ids

        texts = column(train, "text")
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        shots = [self.tokenizer(texts[i], add_special_tokens=True)["input_ids"] + eos
                 for i in draw_shots(len(texts), k, seed)]
        out = []
        for p in prompts:
            ids, kept = fitted(lambda s, p=p: joined_ids(s, p["prompt_ids"]), shots, self.max_length)
            out.append({**p, "prompt_ids": ids, "shots": kept})
        return out

    def preview(self, tokenizer: Any, row: dict[str, Any], spec: Any) -> Any:
        from tunelab.lm.chat_format import render_text

        return render_text(tokenizer, row["text"], spec.data.max_length)

    def describe_loss(self, spec: Any) -> str:
        return "every token"


def truncation_findings(encoded: dict[str, LMEncoded], max_length: int) -> list[Any]:
    """The truncation report: how many examples max_length cuts, and which ones it leaves untrainable."""
    from tunelab.data.doctor import Finding

    findings = []
    cut = {name: e for name, e in encoded.items() if e.truncated}
    if cut:
        n = sum(len(e.truncated) for e in cut.values())
        tokens = sum(e.tokens_cut for e in cut.values())
        findings.append(Finding("truncated", "warning",
                                f"{n} example(s) are longer than max_length={max_length}; {tokens} token(s) cut from "
                                "their ends (" + ", ".join(f"{k} {len(e.truncated)}" for k, e in cut.items()) + ")",
                                n, "raise data.max_length, or shorten those conversations",
                                [loc for e in cut.values() for loc in e.truncated][:5],
                                {"by_split": {k: len(e.truncated) for k, e in cut.items()}, "tokens_cut": tokens},
                                [loc for e in cut.values() for loc in e.truncated]))
    lost = [loc for e in encoded.values() for loc in e.untrainable]
    if lost:
        findings.append(Finding("no-trained-tokens", "warning",
                                f"{len(lost)} example(s) have no trained token left after truncation: they teach "
                                "nothing and are skipped", len(lost), "raise data.max_length", lost[:5], locations=lost))
    return findings
