"""model.method: setfit — few-shot text classification with the setfit library.

SetFit fine-tunes a sentence encoder contrastively on pairs drawn from a few labelled examples (same label:
similar; different labels: dissimilar), then fits a classification head on the tuned embeddings. With 8-32
examples per class it beats plain fine-tuning, which has too little data to move a freshly initialised head.

The trained body and head are converted into one `SentenceClassifier` (tunelab.fewshot.model) that returns
logits for a tokenized batch, so the run directory is an ordinary one: evaluate, predict, serve, monitor and
export load it as any text-classification run. The conversion is checked: the converted model's
probabilities must match setfit's own on the training texts (PARITY_ATOL), or the run stops.
"""

from __future__ import annotations

import tempfile
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from tunelab.spec.schema import RunSpec, SpecError

if TYPE_CHECKING:  # the heavy imports wait for training
    import torch

    from tunelab.fewshot.model import SentenceClassifier
    from tunelab.train.loop import TrainState
    from tunelab.train.trainers import TrainJob

PARITY_ATOL = 1e-4  # largest |probability difference| between setfit's model and the converted one
ABSENT_CLASS_LOGIT = -1e4  # a label with no training example: the head never predicts it


def body_layout(body: Any) -> tuple[str, bool]:
    """(pooling mode, whether embeddings are L2-normalised) of a SentenceTransformer made of a transformer,
    a pooling module and optionally a Normalize module; other layouts cannot be reproduced exactly, so refuse."""
    from tunelab.fewshot.model import POOLINGS

    kinds = [type(module).__name__ for module in body]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise SpecError(f"model.method setfit supports sentence encoders made of Transformer -> Pooling "
                        f"(-> Normalize); this one is {' -> '.join(kinds)}. Use method: full or lora.")
    pooling = body[1].pooling_mode
    if pooling not in POOLINGS:
        raise SpecError(f"model.method setfit supports {', '.join(POOLINGS)} pooling; this encoder pools "
                        f"by {pooling}. Use method: full or lora.")
    return pooling, len(kinds) == 3


def linear_head(head: Any, n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [n_labels x dim], bias [n_labels]) of a Linear whose softmax equals HEAD's probabilities.

    A multinomial LogisticRegression is softmax(coef @ x + intercept): the rows as they are, one per class it
    saw. A binary one is sigmoid(z) for its second class, which is softmax([0, z]). SetFit's differentiable
    head is softmax(linear(x) / (temperature + eps)): its linear layer divided by that scale."""
    import torch
    from sklearn.linear_model import LogisticRegression

    if isinstance(head, LogisticRegression):
        coef = torch.as_tensor(head.coef_, dtype=torch.float64)
        intercept = torch.as_tensor(head.intercept_, dtype=torch.float64)
        classes = [int(c) for c in head.classes_]
        if coef.shape[0] == 1:  # binary: P(classes[1]) = sigmoid(z)
            coef, intercept = torch.cat([torch.zeros_like(coef), coef]), torch.cat([torch.zeros(1, dtype=torch.float64), intercept])
        weight = torch.zeros(n_labels, coef.shape[1], dtype=torch.float64)
        bias = torch.full((n_labels,), ABSENT_CLASS_LOGIT, dtype=torch.float64)
        weight[classes], bias[classes] = coef, intercept
        return weight, bias
    from setfit.modeling import SetFitHead  # setfit imports the Trainer stack: only when its head is used

    if isinstance(head, SetFitHead):
        scale = head.temperature + head.eps
        linear = head.linear
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        return linear.weight.detach().cpu().double() / scale, bias.detach().cpu().double() / scale
    raise TypeError(f"cannot convert a {type(head).__name__} head into a linear layer")


def setfit_arguments(spec: RunSpec, output_dir: str, show_progress: bool) -> Any:
    """setfit.TrainingArguments from the spec: model.setfit for SetFit's own settings; the training section's
    batch size, learning rate (the body's), warmup, weight decay and seed; data.max_length."""
    from setfit import TrainingArguments

    cfg, t = spec.model.setfit, spec.training
    return TrainingArguments(
        output_dir=output_dir, batch_size=(t.batch_size, t.batch_size), num_epochs=(cfg.body_epochs, cfg.head_epochs),
        num_iterations=cfg.iterations, sampling_strategy=cfg.sampling, body_learning_rate=spec.learning_rate,
        head_learning_rate=cfg.head_learning_rate, end_to_end=cfg.end_to_end, l2_weight=t.weight_decay,
        warmup_proportion=t.warmup, max_length=spec.data.max_length, seed=t.seed, report_to="none",
        save_strategy="no", logging_steps=1, show_progress_bar=show_progress)


def _head_weights(weights: list[float] | None) -> dict[int, float] | None:
    """The recipe's class weights as scikit-learn's class_weight (label id -> weight); None: unweighted. The
    differentiable head is not weighted (docs/defaults.md)."""
    return None if weights is None else {i: w for i, w in enumerate(weights) if w > 0}


def train_setfit(job: TrainJob) -> tuple[SentenceClassifier, TrainState]:
    """Train SetFit on the spec's training split (seeded by training.seed), convert it into a
    SentenceClassifier, check the conversion, and score validation once (SetFit has no epochs to choose
    between: one history row, best_epoch 1)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from setfit import SetFitModel, Trainer
    from setfit.modeling import SetFitHead
    from sklearn.linear_model import LogisticRegression
    from transformers import set_seed

    from tunelab.fewshot.model import from_encoder
    from tunelab.run.weights import base_weights
    from tunelab.train.loop import TIME_LIMIT, TrainState
    from tunelab.train.methods import MethodUnavailable

    spec, task, accelerator = job.spec, job.task, job.accelerator
    if accelerator.num_processes > 1:
        raise MethodUnavailable("model.method setfit trains in one process; run it without accelerate launch / torchrun")
    cfg, labels = spec.model.setfit, list(task.labels)
    device = str(accelerator.device)
    set_seed(spec.training.seed)  # the differentiable head's initial weights
    # not SetFitModel.from_pretrained: it unpickles heads; the body's folders are safetensors unless trusted
    body = SentenceTransformer(job.base, device=device,
                               model_kwargs={"use_safetensors": base_weights(job.base, spec.model.trust_pickle)})
    body.max_seq_length = spec.data.max_length  # the same truncation as the task's tokenizer
    pooling, normalize = body_layout(body)
    head = (SetFitHead(body.get_sentence_embedding_dimension(), len(labels), device=device)
            if cfg.head == "differentiable" else LogisticRegression(class_weight=_head_weights(job.class_weights)))
    setfit_model = SetFitModel(model_body=body, model_head=head, labels=labels)
    texts, ids = [str(t) for t in job.rows["text"]], [int(i) for i in task.truth(job.rows)]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunelab-setfit-") as scratch:  # setfit wants an output_dir
        trainer = Trainer(model=setfit_model, args=setfit_arguments(spec, scratch, accelerator.is_main_process),
                          train_dataset=Dataset.from_dict({"text": texts, "label": ids}))
        quiet_logs(trainer.st_trainer)
        limit = stop_at_time_limit(trainer.st_trainer, spec.training.time_limit)
        trainer.train()
    train_seconds = time.perf_counter() - started
    losses = [[int(row["step"]), float(row["embedding_loss"])] for row in trainer.st_trainer.state.log_history
              if "embedding_loss" in row]

    weight, bias = linear_head(setfit_model.model_head, len(labels))
    model = from_encoder(body[0].auto_model, pooling, normalize, weight, bias, labels).to(accelerator.device)
    train_logits = check_parity(setfit_model, model, task, job.encoded, texts, spec.training.eval_batch_size)
    # training-set metrics of the final model, in the loop's format: the whole split as one "batch" seen
    train_metrics = task.train_metrics([(ids, task.predict_ids(train_logits).tolist())])

    scored = time.perf_counter()
    val = job.evaluate(model)
    metric = spec.evaluation.metric
    row = {"epoch": 1, "train_loss": float(np.mean([loss for _, loss in losses])) if losses else float("nan"),
           "lr": spec.learning_rate, "pairs": len(texts) * 2 * (cfg.iterations or 0) or None, **train_metrics,
           **{f"val_{k}": v for k, v in val.items() if not isinstance(v, (dict, list))},
           "train_seconds": round(train_seconds, 2), "val_seconds": round(time.perf_counter() - scored, 2)}
    accelerator.print(f"setfit: embedding loss {row['train_loss']:.4f}  val {metric} {val[metric]:.4f}")
    state = TrainState(epoch=1, global_step=losses[-1][0] if losses else 0, best_metric=val[metric], best_epoch=1,
                       history=[row], step_losses=losses)
    if limit["hit"]:
        state.stop_reason, state.stopped_early = TIME_LIMIT, True
        row.update(partial=True, batches=state.global_step)
        accelerator.print(f"time limit: SetFit's body training stopped after {spec.training.time_limit:g} s "
                          f"(training.time_limit), at pair batch {state.global_step}; the head was fitted on it")
    return model, state


def stop_at_time_limit(trainer: Any, seconds: float | None) -> dict[str, bool]:
    """Honour training.time_limit in SetFit's contrastive body training (the long part: every pair batch):
    a transformers callback ends training after the step under way once the limit has passed, as tunelab's
    loop does. Returns a flag that says whether it fired."""
    from transformers import TrainerCallback

    fired = {"hit": False}
    if not seconds:
        return fired
    deadline = time.monotonic() + seconds

    class TimeLimit(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if time.monotonic() >= deadline:
                control.should_training_stop = fired["hit"] = True
            return control

    trainer.add_callback(TimeLimit())
    return fired


def quiet_logs(trainer: Any) -> None:
    """Keep the Trainer's progress bar but not the dict it prints per logged step (logging every step keeps
    the losses for history.json; printing them would flood the terminal)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, *args: Any, **kwargs: Any) -> None:
            return None

    shown = trainer.pop_callback(ProgressCallback) is not None
    trainer.pop_callback(PrinterCallback)
    if shown:
        trainer.add_callback(QuietProgress)


def check_parity(setfit_model: Any, model: SentenceClassifier, task: Any, encoded: Any, texts: list[str],
                 batch_size: int) -> np.ndarray:
    """Stop the run when the converted model's probabilities on the training texts differ from setfit's own
    by more than PARITY_ATOL: a saved model that silently disagrees with what was trained is worse than none.
    Returns the converted model's logits on those texts."""
    from sklearn.linear_model import LogisticRegression

    from tunelab.train.loop import predict_logits

    logits = predict_logits(model, encoded, task.collator(), batch_size, desc="parity")
    ours = task.scores(logits)
    theirs = np.asarray(setfit_model.predict_proba(texts, as_numpy=True, show_progress_bar=False), dtype=np.float64)
    head = setfit_model.model_head  # a logistic head has columns for the classes it saw in training only
    present = [int(c) for c in head.classes_] if isinstance(head, LogisticRegression) else list(range(ours.shape[1]))
    diff = float(np.abs(ours[:, present] - theirs).max()) if len(texts) else 0.0
    if diff > PARITY_ATOL:
        raise RuntimeError(f"the converted SetFit model's probabilities differ from setfit's by up to {diff:.2e} "
                           f"(allowed {PARITY_ATOL:g}) on the training texts; please report this with the base model")
    return logits
