"""Runs as served models: a classifier (text, image, or text + image) or a generator (chat, completion).

Every model is loaded once at start-up from its run directory, safetensors only (a folder that holds its
weights only as pickle files is refused), with ``trust_remote_code`` never set. Each model owns one
thread: every forward pass and ``generate`` call for it runs there, one batch at a time (a text classifier
run by ONNX Runtime owns one thread per compute thread and runs that many batches at once). Tokenizers are used
only on the event-loop thread (fast tokenizers are not safe to share between threads), so the model
thread receives token ids and tensors, never text.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunelab.evaluate import gate
from tunelab.run import RunDir, RunError, load_run_spec
from tunelab.run.weights import PICKLE_SUFFIXES, UnsafeWeights, check_safetensors  # noqa: F401 - re-exported
from tunelab.serve.batching import MicroBatcher
from tunelab.serve.settings import ServeSettings
from tunelab.tasks import CAUSAL_LM, CLASSIFY, get_task

logger = logging.getLogger("tunelab.serve")



def _pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------------------
@dataclass
class EncoderItem:
    """One input to a classifier run. OP is "classify" or "embed"; IDS are token ids (already cut to the
    model's max_length), IMAGE a decoded PIL image."""

    op: str
    ids: list[int] | None = None
    image: Any = None


@dataclass
class GenJob:
    """One generation request: PROMPTS (token ids) x N samples each, one set of sampling parameters.
    STREAM, when set, is called from the model thread with each step's new token per row."""

    prompts: list[list[int]]
    n: int
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    seed: int | None = None
    stream: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple:
        """Jobs with the same key can share one left-padded `generate` call."""
        if self.stream is not None or self.seed is not None:
            return ("alone", id(self))
        return (self.do_sample, self.temperature, self.top_p, self.max_new_tokens)


class ServedModel:
    routes: tuple[str, ...] = ()

    def __init__(self, name: str, run: Path, task_cls: Any, settings: ServeSettings) -> None:
        self.name, self.run, self.task_name, self.settings = name, run, task_cls.name, settings
        self.family = task_cls.family
        spec_file = RunDir(run).file(RunDir.SPEC)
        self.created = int(spec_file.stat().st_mtime) if spec_file.is_file() else int(time.time())
        self.routes = tuple(task_cls.routes)  # what the run's task says it serves
        self.workers = 1  # model calls in flight at once
        self.executor: ThreadPoolExecutor | None = None
        self.batcher: MicroBatcher | None = None

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "tunelab",
                "task": self.task_name, "endpoints": list(self.routes)}

    def make_batcher(self, metrics: Any) -> MicroBatcher:
        kind = "generate" if self.family == CAUSAL_LM else "encode"

        def on_batch(size: int, seconds: float, waits: list[float]) -> None:
            if metrics is not None:
                metrics.batch_size.labels(self.name, kind).observe(size)
                metrics.model_seconds.labels(self.name, kind).observe(seconds)
                for w in waits:
                    metrics.queue_wait.labels(self.name).observe(w)

        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"model-{self.name}")
        self.batcher = MicroBatcher(self.name, self.run_batch, self.executor, self.settings.max_batch_size,
                                    self.settings.max_wait_ms / 1000.0, self.settings.max_pending, on_batch,
                                    workers=self.workers)
        return self.batcher

    def run_batch(self, items: list[Any]) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


class ClassifierModel(ServedModel):
    """A text-, image- or text+image-classification run. Text runs also serve embeddings: the mean-pooled
    (attention-masked) last hidden state of the fine-tuned encoder, L2-normalised."""

    def __init__(self, name: str, run: Path, task_cls: Any, settings: ServeSettings) -> None:
        super().__init__(name, run, task_cls, settings)
        spec = load_run_spec(run)
        model_dir = RunDir(run).find_model()
        check_safetensors(model_dir)
        self.task, self.model = task_cls.from_saved(RunDir(run), spec)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.labels: list[str] = list(self.task.labels)
        self.multi_label = bool(self.task.multi_label)
        self.input_kind = self.task.input_kind
        self.tokenizer = self.task.tokenizer  # None for image-only tasks
        self.max_length = int(self.task.max_length or 0) or None
        self.pad_id = (self.tokenizer.pad_token_id or 0) if self.tokenizer is not None else 0
        self.image_mode = None
        if self.input_kind != "text":
            self.image_mode = "RGB" if self.task.processing.grayscale_to_rgb else "L"
        self.onnx: Any = None
        self.runtime, self.runtime_note = "torch", ""
        self._pick_runtime(model_dir)
        if settings.quantize == "int8":
            self._use_int8(spec)

    def _pick_runtime(self, model_dir: Path) -> None:
        """ONNX Runtime for a text classifier on the CPU when its export verifies against PyTorch (see
        tunelab.export.onnx_encoder: less CPU per text, no GIL held); PyTorch otherwise, with the reason kept."""
        wanted = "onnx" if self.settings.quantize else self.settings.runtime
        if wanted == "torch":
            return
        if self.input_kind != "text" or self.device.type != "cpu":
            if wanted == "onnx":
                raise RunError(f"{self.run}: ONNX Runtime (--runtime onnx, --quantize) serves text classifiers on the CPU only "
                               f"(this run is {self.task_name} on {self.device.type})")
            return
        from tunelab.export.onnx_encoder import ExportError, load_verified

        threads = self.settings.threads or torch.get_num_threads()
        try:
            # one compute thread per call and THREADS calls at once: per text, a single-threaded call costs less
            # CPU than one call spread over several threads (no barriers between them; docs/benchmarks.md)
            self.onnx, check = load_verified(self.model, model_dir, 1, self.max_length or 512, self.pad_id)
        except ExportError as err:
            if wanted == "onnx":
                raise RunError(f"{self.run}: cannot serve with ONNX Runtime: {err}") from err
            self.runtime_note = f"ONNX Runtime not used: {err}"
            logger.warning("%s: %s; serving with PyTorch", self.name, self.runtime_note)
            return
        self.workers = threads
        self.runtime, self.runtime_note = "onnxruntime", f"ONNX export {check.describe()}"
        logger.info("%s: serving with ONNX Runtime (%d calls at once); %s", self.name, threads, self.runtime_note)

    def _use_int8(self, spec: Any) -> None:
        """Swap in the int8 twin of the verified float export, but only after it gives the float model's labels
        on the run's own held-out texts (at least min_int8_agreement of them) and loses at most
        max_int8_metric_drop of the run's metric; otherwise refuse to start, with the numbers."""
        from tunelab.data import prepare
        from tunelab.export.onnx_encoder import ExportError, OnnxEncoder, check_int8, pad_batches, quantize_int8

        try:
            prepared = prepare(spec.data, spec.training.seed)
        except Exception as err:  # noqa: BLE001 - unreadable data: say what int8 needs
            raise RunError(f"{self.run}: --quantize int8 checks the int8 model on the run's held-out texts, and "
                           f"its data cannot be read here ({err}); serve without --quantize") from err
        split = "validation" if len(prepared.splits.get("validation", [])) else "test"
        ds = prepared.splits.get(split)
        if ds is None or not len(ds):
            raise RunError(f"{self.run}: --quantize int8 needs held-out texts to check against; the run has none")
        texts = [str(t) for t in ds["text"]]
        ids, _ = self.tokenize(texts, cap=1 << 30)
        batches = pad_batches(ids, self.pad_id, 16)
        try:
            quantized = OnnxEncoder(quantize_int8(self.onnx.path), 1)
        except ExportError as err:
            raise RunError(f"{self.run}: {err}") from err
        metric = spec.evaluation.metric if spec.evaluation.metric != "loss" else "accuracy"
        check = check_int8(self.onnx, quantized, batches, self.task.truth(ds), self.task.scores, self.task.predict_ids,
                           self.task.metrics, metric, split)
        if not check.passes(self.settings.min_int8_agreement, self.settings.max_int8_metric_drop):
            raise RunError(f"{self.run}: the int8 model is not close enough to the float one: {check.describe()} "
                           f"(need >= {self.settings.min_int8_agreement:.0%} agreement and at most "
                           f"{self.settings.max_int8_metric_drop} lost); serve without --quantize")
        self.onnx, self.runtime = quantized, "onnxruntime-int8"
        self.runtime_note = check.describe()
        self.quant_check = check
        logger.info("%s: serving the int8 model; %s", self.name, self.runtime_note)

    @property
    def needs_text(self) -> bool:
        return self.input_kind in ("text", "text+image")

    @property
    def needs_image(self) -> bool:
        return self.input_kind in ("image", "text+image")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "labels": self.labels, "multi_label": self.multi_label, "input": self.input_kind,
                "runtime": self.runtime, **({"runtime_check": self.runtime_note} if self.runtime_note else {})}

    # -- event-loop side -------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], cap: int) -> tuple[list[list[int]], list[int]]:
        """Token ids per text, cut to the run's max_length exactly as `tokenizer(..., truncation=True)` cuts them in
        training, and their counts (the tokens the model reads). Raises ValueError(index, reason) for a text whose
        model input is over CAP tokens (or that cannot be cut cheaply). Call on the event-loop thread only (it sets the backend's truncation)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow (Python) tokenizer: two passes
            ids = [list(x) for x in self.tokenizer(texts, add_special_tokens=True, truncation=bool(self.max_length),
                                                     max_length=self.max_length)["input_ids"]]
            self._check_cap([len(x) for x in ids], cap)
            return ids, [len(x) for x in ids]
        backend.no_truncation()
        backend.no_padding()
        special = self.tokenizer.num_special_tokens_to_add()
        encodings = self._encode_content(backend, texts, special)
        out = []
        for e in encodings:
            if self.max_length and len(e.ids) + special > self.max_length:
                e.truncate(self.max_length - special)
            out.append(list(backend.post_process(e, None, True).ids))
        counts = [len(ids) for ids in out]
        self._check_cap(counts, cap)
        return out, counts

    def _encode_content(self, backend: Any, texts: list[str], special: int) -> list[Any]:
        """Encodings (no special tokens) whose first max_length - special tokens are those of the whole text.

        A long text is tokenized from a prefix only (8 characters per kept token): when the kept tokens all
        end before the prefix's last whitespace, the cut did not touch them (tokenizers split words at
        whitespace first), so they are exactly the whole text's first tokens; otherwise the whole text is
        tokenized. This keeps a 100 kB input from costing 100 kB of tokenization for 64 tokens."""
        keep = (self.max_length - special) if self.max_length else None
        prefix = max(256, 8 * self.max_length) if self.max_length else None
        cut = {i for i, t in enumerate(texts) if prefix is not None and len(t) > prefix}
        encodings = backend.encode_batch([t[:prefix] if i in cut else t for i, t in enumerate(texts)],
                                         add_special_tokens=False) if texts else []
        redo = []
        for i in sorted(cut):
            e, head = encodings[i], texts[i][:prefix]
            space = max(head.rfind(c) for c in " \n\t\r")
            if not (keep and len(e.ids) > keep and space > 0 and e.offsets[keep - 1][1] <= space):
                redo.append(i)
        for i in redo:
            if len(texts[i]) > 64 * prefix:  # pathological (no word break near the start): refuse, do not grind
                raise ValueError(i, f"has no word break in its first {prefix} characters and is longer than "
                                    f"{64 * prefix} characters; shorten it")
        if redo:
            for i, e in zip(redo, backend.encode_batch([texts[i] for i in redo], add_special_tokens=False)):
                encodings[i] = e
        return encodings

    @staticmethod
    def _check_cap(counts: list[int], cap: int) -> None:
        for i, n in enumerate(counts):
            if n > cap:
                raise ValueError(i, f"has {n} tokens; this server's limit is {cap}")

    # -- model thread ------------------------------------------------------------------------------------
    def run_batch(self, items: list[EncoderItem]) -> list[Any]:
        """Scores (classify) or unit vectors (embed) per item. On the CPU a text batch runs in sub-batches of at
        most `max_batch_tokens` padded tokens, shortest texts together: per text, 8 x 64 tokens of MiniLM run
        faster than 16 x 64 (the activations stay in cache), and sorting by length cuts padding."""
        budget = self.settings.max_batch_tokens
        if not (self.needs_text and budget and self.device.type == "cpu" and len(items) > 1):
            return self._forward(items)
        chunks: list[list[int]] = [[]]
        longest = 0
        for i in sorted(range(len(items)), key=lambda i: len(items[i].ids)):
            n = len(items[i].ids)
            if chunks[-1] and (len(chunks[-1]) + 1) * max(longest, n) > budget:
                chunks.append([])
                longest = 0
            chunks[-1].append(i)
            longest = max(longest, n)
        results: list[Any] = [None] * len(items)
        for chunk in chunks:
            for i, r in zip(chunk, self._forward([items[i] for i in chunk])):
                results[i] = r
        return results

    def _forward(self, items: list[EncoderItem]) -> list[Any]:
        want_emb = any(it.op == "embed" for it in items)
        inputs: dict[str, torch.Tensor] = {}
        mask = None
        if self.needs_text:
            inputs["input_ids"], mask = _pad_right([it.ids for it in items], self.pad_id)
            inputs["attention_mask"] = mask
        if self.onnx is not None:
            return self._forward_onnx(items, inputs["input_ids"].numpy(), mask.numpy(), want_emb)
        if self.needs_image:
            from tunelab.vision.transforms import eval_transform

            inputs["pixel_values"] = eval_transform([it.image for it in items], self.task.processing)
        with torch.inference_mode():
            if self.input_kind == "text":
                out = self.model(**inputs, output_hidden_states=want_emb)
                logits = out.logits.float().numpy()
            else:
                logits = self.model(**inputs).logits.float().numpy()
            emb = None
            if want_emb:
                hidden = out.hidden_states[-1]
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
                emb = torch.nn.functional.normalize(pooled.float(), p=2, dim=-1).numpy()
        scores = self.task.scores(logits)
        results: list[Any] = []
        for i, it in enumerate(items):
            results.append(emb[i].astype(np.float32) if it.op == "embed" else scores[i].astype(np.float64))
        return results

    def _forward_onnx(self, items: list[EncoderItem], ids: np.ndarray, mask: np.ndarray, want_emb: bool) -> list[Any]:
        """The same outputs as the PyTorch path (verified at load), from one GIL-free ONNX Runtime call."""
        logits, hidden = self.onnx.run(ids, mask, hidden=want_emb)
        scores = self.task.scores(logits.astype(np.float32, copy=False))
        emb = None
        if want_emb:
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)
            emb = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return [emb[i].astype(np.float32) if it.op == "embed" else scores[i].astype(np.float64)
                for i, it in enumerate(items)]

    def prediction(self, scores: np.ndarray, top_k: int | None) -> dict[str, Any]:
        ranked = sorted(zip(self.labels, scores.tolist()), key=lambda x: -x[1])
        shown = dict(ranked[:top_k] if top_k else ranked)
        row: dict[str, Any] = {"label": ranked[0][0], "score": ranked[0][1], "scores": shown}
        if self.multi_label:
            row["labels"] = [lab for lab, s in ranked if s > 0.5]
        return row


class _StepStreamer:
    """transformers streamer: skips the prompt, then hands each step's tokens (one per row) to CALLBACK."""

    def __init__(self, callback: Any) -> None:
        self.callback, self._prompt_seen = callback, False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.callback(("tokens", value.reshape(-1).tolist()))

    def end(self) -> None:
        self.callback(("end", None))


class _Cancelled(StoppingCriteria):
    """Stopping criterion: stop the whole batch once every job in it has been cancelled."""

    def __init__(self, events: list[threading.Event]) -> None:
        super().__init__()
        self.events = events

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = all(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class GeneratorModel(ServedModel):
    """A chat or completion run: its merged export, full model, or base + adapter (as `tunelab generate`)."""

    def __init__(self, name: str, run: Path, task_cls: Any, settings: ServeSettings) -> None:
        super().__init__(name, run, task_cls, settings)
        from tunelab.lm.generation import stop_token_ids
        from tunelab.lm.use import load_generator, task_for

        self.model, self.tokenizer = load_generator(run)  # safetensors only: the folder, adapter and its base
        self.model.eval()
        self.task = task_for(run, self.tokenizer)
        self.stops = stop_token_ids(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (
            self.stops[0] if self.stops else 0)
        config = getattr(self.model, "config", None)
        self.context = getattr(config, "max_position_embeddings", None) or None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "context_length": self.context}

    # -- event-loop side -----------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        from tunelab.lm.chat_format import render_prompt

        return render_prompt(self.tokenizer, messages)

    def completion_prompt(self, text: str) -> list[int]:
        return list(self.task.prompt_ids(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- model thread ----------------------------------------------------------------------------------------
    def run_batch(self, jobs: list[GenJob]) -> list[Any]:
        results: list[Any] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.key, []).append(i)
        for indices in groups.values():
            live = [i for i in indices if not jobs[i].cancel.is_set()]
            if not live:
                continue
            try:
                outs = self._generate([jobs[i] for i in live])
            except Exception as err:  # noqa: BLE001 - fail these jobs only
                logger.exception("model %s: generation failed", self.name)
                outs = [err] * len(live)
            for i, out in zip(live, outs):
                results[i] = out
        return results

    def _generate(self, jobs: list[GenJob]) -> list[list[tuple[list[int], str]]]:
        """For each job, (new token ids, finish reason) per row (prompt-major, then sample)."""
        first = jobs[0]
        rows = [p for job in jobs for p in job.prompts for _ in range(job.n)]
        longest = max(len(p) for p in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, p in enumerate(rows):  # left padding, as in tunelab.lm.generation: each row continues from its own end
            ids[r, longest - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, longest - len(p):] = 1
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
                                    if first.do_sample else
                                    {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        if first.seed is not None:
            torch.manual_seed(first.seed)
        device = next(self.model.parameters()).device
        streamer = _StepStreamer(first.stream) if first.stream is not None else None
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      max_new_tokens=first.max_new_tokens, eos_token_id=self.stops or None,
                                      pad_token_id=self.pad_id, streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([_Cancelled([j.cancel for j in jobs])]),
                                      **sampling)
        new = out[:, longest:].tolist()
        per_job: list[list[tuple[list[int], str]]] = []
        r = 0
        for job in jobs:
            choices = []
            for _ in range(len(job.prompts) * job.n):
                row = new[r]
                r += 1
                cut = next((i for i, t in enumerate(row) if t in self.stops), None)
                choices.append((row[:cut], "stop") if cut is not None else (row, "length"))
            per_job.append(choices)
        return per_job


def load_model(run: str | Path, settings: ServeSettings, name: str | None = None) -> ServedModel:
    """The served model for RUN (a finished run directory), named NAME or after the run's folder."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"{run}: no such run directory")
    spec = load_run_spec(run)
    name = name or run.resolve().name
    gate.allow(RunDir(run).status(), run, settings.allow_worse, "serve")
    task_cls = get_task(spec.task)
    served_by = {CLASSIFY: ClassifierModel, CAUSAL_LM: GeneratorModel}
    if task_cls.family not in served_by:
        raise RunError(f"{run}: tunelab serve does not know how to serve a {spec.task} run")
    return served_by[task_cls.family](name, run, task_cls, settings)
