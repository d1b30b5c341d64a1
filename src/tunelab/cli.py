"""The `tunelab` command: one verb per lifecycle step. Thin: parse, call the library, print."""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunelab.run.exitcodes import CHECK_FAILED, INTERNAL, NOT_PROMOTED, USER_ERROR, interrupted

if TYPE_CHECKING:
    from tunelab.spec import RunSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pre-trained models for your task, with evidence that they beat the base.")
err = Console(stderr=True, soft_wrap=True)
out = Console()


# The errors a user can fix (bad spec, data, run directory, model name...): printed as one line, exit code
# USER_ERROR (2). Every other exception is a bug in tunelab: INTERNAL (70), with the traceback (see main).
# Named by module, not imported: some live in heavy modules (tunelab.data.sources pulls in datasets and
# pandas, tunelab.train.methods pulls in torch), and importing them here would make `tunelab --help` and a
# spec typo wait for torch. An instance of a class can only exist once its module is imported, so looking
# the classes up in sys.modules after the fact finds every one that can have been raised.
USER_ERRORS = (
    ("tunelab.spec", "SpecError"),
    ("tunelab.data.sources", "DataError"),
    ("tunelab.run.layout", "RunError"),
    ("tunelab.catalog", "ModelNotFound"),
    ("tunelab.train.methods", "MethodUnavailable"),
    ("tunelab.lm.chat_format", "TemplateError"),
    # the public re-exports too, so that a class moving between modules is still caught
    ("tunelab.data", "DataError"),
    ("tunelab.run", "RunError"),
    # a value that fails the spec's own rules after loading (`--name ../x`, a search range past a bound)
    ("pydantic", "ValidationError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes among the modules imported so far (never imports anything)."""
    found = []
    for module_name, class_name in USER_ERRORS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


LOWER_IS_BETTER = ("loss", "perplexity")


def _summary_table(metrics: dict, metric_names: tuple[str, ...] = ("accuracy", "macro_f1")) -> Table:
    table = Table(title="baseline vs fine-tuned (same examples)")
    for col in ("split", "n", "metric", "baseline", "fine-tuned", "gain"):
        table.add_column(col, justify="left" if col in ("split", "metric") else "right")
    for split, ft in metrics["fine_tuned"].items():
        base = metrics.get("baseline", {}).get(split, {})
        for m in metric_names:
            if m not in ft:
                continue
            gain = f"{ft[m] - base[m]:+.4f}" if m in base else "–"
            better = (ft[m] < base[m]) if m in LOWER_IS_BETTER else (ft[m] > base[m]) if m in base else False
            style = "green" if m in base and better else ("red" if m in base else "")
            table.add_row(split, str(ft["n"]), m, f"{base[m]:.4f}" if m in base else "–", f"{ft[m]:.4f}",
                          f"[{style}]{gain}[/]" if style else gain)
    return table


TRUST_PICKLE_HELP = ("Load the base model even where its weights are pickle files (.bin/.pt), which can run code: "
                     "only for a folder you vetted yourself; warned about and recorded in run.json. Better: "
                     "`tunelab convert-weights FOLDER` once.")


def trust_base_pickle(run_spec: RunSpec, trust: bool) -> None:
    """--trust-pickle: set model.trust_pickle on RUN_SPEC and say so (also when the spec file set it)."""
    if trust:
        run_spec.model.trust_pickle = True
    if run_spec.model.trust_pickle:
        err.print("[bold yellow]warning:[/] model.trust_pickle is on: the base model may be loaded from pickle "
                  "weights, which can run code; recorded in run.json", highlight=False)


@app.command()
def train(spec: Path = typer.Argument(..., help="Run spec (YAML)."),
          name: Optional[str] = typer.Option(None, help="Run name; overrides the spec's."),
          resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
          force: bool = typer.Option(False, "--force", help="Train despite data errors (recorded in the report)."),
          trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_PICKLE_HELP)) -> None:
    """Fine-tune the base model on the spec's data; write runs/<name>/."""
    from tunelab.spec import load_spec

    run_spec = load_spec(spec)  # light (pydantic + yaml): a typo is reported before torch is imported
    if name:
        run_spec.name = name
    trust_base_pickle(run_spec, trust_pickle)
    from tunelab.recipes import fine_tune

    run = fine_tune(run_spec, resume=resume, force=force, overwrite=overwrite)  # a signal: Interrupted, see main
    if not run.metrics:  # not the main process
        return
    names = ("loss", "perplexity", "exact_match", "token_f1", "rouge_l") if run_spec.generative else ("accuracy", "macro_f1")
    out.print(_summary_table(run.metrics, names))
    if run.comparison:
        c = run.comparison
        verdict = "[green]better than[/]" if c["better"] else "[red]NOT better than[/]"
        out.print(f"test {c['metric']}: baseline {c['baseline']:.4f} -> fine-tuned {c['fine_tuned']:.4f} "
                  f"({verdict} the untuned base, n={c['n']})")
    out.print(f"run directory: {run.dir}  (report: {run.dir / 'report.html'})")
    _print_gate(run.gate, spec)
    if not run.promoted:
        raise typer.Exit(NOT_PROMOTED)

def _print_gate(verdict: dict, spec: Path) -> None:
    """The promotion gate's verdict; when the model is not promoted, why, and what to change."""
    if not verdict:
        return
    if verdict["promoted"]:
        note = f" — {verdict['interval_note']}" if verdict.get("interval_note") and verdict.get("interval") else ""
        out.print(f"[green]promoted:[/] {escape(verdict['reason'])}{escape(note)}", highlight=False)
        return
    err.print(f"[bold red]not promoted:[/] {escape(verdict['reason'])}", highlight=False)
    for finding in verdict.get("diagnosis", []):
        err.print(f"  [yellow]{finding['kind']}[/]: {escape(finding['message'])}; try: {escape(finding['advice'])}",
                  highlight=False)
    err.print("run.json says status: not-promoted; `tunelab serve` and `tunelab export` refuse this run unless given "
              "--allow-worse")
    err.print(f"to search for better settings: `tunelab tune {spec} --trials 20` (learning rate, epochs, batch size, "
              f"...), or `tunelab auto {spec} --budget 30m` (zero-shot -> few-shot -> LoRA -> full)", highlight=False)


@app.command("plan")
def plan_command(spec: Path = typer.Argument(..., help="Run spec (YAML)."),
                 gpu_memory: Optional[str] = typer.Option(None, "--gpu-memory", help="Plan for a GPU with this much "
                                                          "memory (24GB, 80GiB); default: this machine's GPU, else "
                                                          "its RAM."),
                 probe_steps: int = typer.Option(3, "--probe-steps", min=1, help="Batches the probe times after a "
                                                 "warm-up batch."),
                 no_probe: bool = typer.Option(False, "--no-probe", help="Skip the probe: memory only, no weights "
                                               "read, no time or energy."),
                 as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON.")) -> None:
    """Before training: the estimated peak memory by part, which methods fit the memory, and time and energy
    from a few measured batches on this machine."""
    from tunelab.spec import load_spec

    run_spec = load_spec(spec)
    budget = None
    if gpu_memory is not None:
        from tunelab.auto.memory import parse_size

        try:
            budget = parse_size(gpu_memory)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--gpu-memory") from None
    from tunelab.auto.plan import plan

    result = plan(run_spec, budget, probe_steps, probe=not no_probe)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        return
    from tunelab.reports.plan import print_plan

    print_plan(out, result)


@app.command("auto")
def auto_ladder(spec: Path = typer.Argument(..., help="Run spec (YAML): task, base model and data."),
                budget: str = typer.Option("30m", help="Time for the whole ladder: seconds, or 45s, 10m, 1h30m."),
                min_gain: float = typer.Option(0.005, help="Smallest validation gain over the best rung so far "
                                               "that lets the ladder climb on (0.005: half a point of a 0-1 metric)."),
                shots: int = typer.Option(3, help="Chat/completion: training examples shown in each prompt of the "
                                          "in-context rung."),
                rung_trials: int = typer.Option(3, min=1, help="Most learning rates a LoRA or full rung tries when "
                                                "its share of the budget has room (the first, then 3x, 1/3x); "
                                                "1: no search."),
                name: Optional[str] = typer.Option(None, help="Ladder name; overrides the spec's."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing ladder folder."),
                force: bool = typer.Option(False, "--force", help="Train despite data errors (recorded in the report)."),
                trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_PICKLE_HELP)
                ) -> None:
    """Climb zero-shot -> few-shot -> LoRA -> full fine-tuning while the validation gain pays for the compute;
    the winner is an ordinary run directory (exit 3 when no trained rung beats zero-shot)."""
    from tunelab.spec import load_spec
    from tunelab.spec.schema import duration_seconds

    run_spec = load_spec(spec)
    if name:
        run_spec.name = name
    trust_base_pickle(run_spec, trust_pickle)
    try:
        seconds = duration_seconds(budget)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--budget") from None
    from tunelab.auto.ladder import auto
    from tunelab.reports.ladder_report import COLUMNS, ladder_rows

    result = auto(run_spec, seconds, min_gain=min_gain, shots=shots, rung_trials=rung_trials, force=force,
                  overwrite=overwrite, say=lambda line: err.print(escape(line), highlight=False))
    record = json.loads((result.dir / "auto.json").read_text())
    table = Table(title=f"the ladder: validation {result.metric} (budget {seconds:.0f} s, used {result.elapsed_s:.0f} s)")
    for col in COLUMNS[:-1]:  # the why column is printed below the table, where it has room
        table.add_column(col, justify="left" if col in ("rung", "method", "status") else "right")
    rows = ladder_rows(record)
    for row in rows:
        table.add_row(*(escape(c) for c in row[:-1]))
    out.print(table)
    for row in rows:
        if row[-1]:
            out.print(f"  {escape(row[0])}: {escape(row[-1])}", highlight=False)
    out.print(f"ladder report: {result.dir / 'auto.html'}")
    if result.winner is None:
        err.print(f"[bold red]{escape(result.verdict)}[/]", highlight=False)
        raise typer.Exit(NOT_PROMOTED)
    out.print(f"[green]{escape(result.verdict)}[/]", highlight=False)
    out.print(f"winner run directory: {result.winner_dir}", highlight=False)


@app.command()
def evaluate(run: Path = typer.Argument(..., help="Run directory."),
             data: Optional[str] = typer.Option(None, help="Score this file instead of the run's validation/test splits."),
             baseline: bool = typer.Option(True, help="Also score the untuned base model on the same examples.")) -> None:
    """Score a finished run on its held-out splits, or on new data, beside the untuned baseline."""
    from tunelab.evaluate.run import evaluate_run

    metrics = evaluate_run(run, data, baseline)
    out.print(_summary_table(metrics))
    out.print_json(json.dumps(metrics))


@app.command()
def predict(run: Path = typer.Argument(..., help="Run directory (or a model folder)."),
            text: Optional[list[str]] = typer.Option(None, "--text", help="A text to classify; repeatable."),
            image: Optional[list[str]] = typer.Option(None, "--image", help="An image to classify (with --text for "
                                                      "text-image runs); repeatable."),
            file: Optional[Path] = typer.Option(None, "--file", help="A .txt (one text per line), CSV, TSV, JSONL or Parquet file."),
            text_column: str = typer.Option("text", help="Text column of --file tables."),
            top_k: int = typer.Option(3, help="Scores to list per text.")) -> None:
    """Predict labels; prints one JSON object per input (JSON lines)."""
    from tunelab.evaluate.predict import predict_inputs, read_texts

    if image:
        rows = predict_inputs(run, list(text) if text else None, list(image), top_k)
    else:
        if bool(text) == bool(file):
            raise typer.BadParameter("give either --text (one or more), --image, or --file")
        rows = predict_inputs(run, list(text) if text else read_texts(file, text_column), None, top_k)
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


@app.command()
def init(task: Optional[str] = typer.Argument(None, help="Task to write a spec for (default: the first task, text "
                                             "classification; an unknown name lists them all)."),
         output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here instead of stdout.")) -> None:
    """Write a commented spec for TASK, generated from that task's schema: only the keys it accepts."""
    from tunelab.spec import template
    from tunelab.tasks import TASKS

    text = template(task or next(iter(TASKS)))
    if output is None:
        sys.stdout.write(text)
        return
    if output.exists():
        raise typer.BadParameter(f"{output} exists; choose another path")
    output.write_text(text, encoding="utf-8")
    err.print(f"wrote {output}")


data_app = typer.Typer(no_args_is_help=True, help="Check and clean data before spending compute on it.")
app.add_typer(data_app, name="data")


def _print_findings(report: dict) -> None:
    from tunelab.reports.data_report import headline

    table = Table(title=f"data report: {headline(report)}")
    for col in ("severity", "check", "count", "message", "first location"):
        table.add_column(col, overflow="fold")
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in report["findings"]:
        table.add_row(f"[{colour[f['severity']]}]{f['severity']}[/]", f["check"], str(f["count"]),
                      escape(f["message"]), (escape(f["examples"][0]) if f["examples"] else "")
                      + (f" (+{len(f['locations']) - 1} more rows)" if len(f.get("locations", [])) > 1 else ""))
    out.print(table)


_FILES_HELP = ("A run spec (YAML: checked as `train` checks it); or data files, train first, then validation and "
               "test (a file named val/dev/test goes to that split), or a bundled set name.")


@data_app.command("check")
def data_check(targets: list[str] = typer.Argument(..., help=_FILES_HELP),
               validation: Optional[str] = typer.Option(None, "--validation", help="Validation file (files only)."),
               test: Optional[str] = typer.Option(None, "--test", help="Test file (files only)."),
               task: Optional[str] = typer.Option(None, "--task", help="Task the files are for (default: inferred: "
                                                  "chat records, image paths or folders, .txt, else text labels)."),
               out_dir: Path = typer.Option(Path("."), "--out", help="Folder for data_report.json / .html."),
               text_column: Optional[str] = typer.Option(None, help="Text column (files only; default: the task's)."),
               label_column: Optional[str] = typer.Option(None, help="Label column (files only)."),
               image_column: Optional[str] = typer.Option(None, help="Image path column (image files only)."),
               multi_label: bool = typer.Option(False, help="Labels are lists (text files only)."),
               model: Optional[str] = typer.Option(None, help="Base model whose tokenizer measures lengths (files only)."),
               max_length: Optional[int] = typer.Option(None, help="Token limit for the length checks (files only).")) -> None:
    """Run the doctor `train` runs; exit code 1 when any finding is an error (for CI). data_report.json lists
    every affected row of every finding (`locations`)."""
    from tunelab.data.check import CheckOptions, check
    from tunelab.reports import data_report

    options = CheckOptions(task=task, validation=validation, test=test, text_column=text_column,
                           label_column=label_column, image_column=image_column, multi_label=multi_label,
                           model=model, max_length=max_length)
    report = check(targets, options)
    data_report.write(report, out_dir)
    _print_findings(report)
    for f in report["findings"]:
        if f["severity"] == "error":
            err.print(f"[red]{f['check']}[/]: {escape(f['message'])}; fix: {escape(f['fix'])}")
            if f["check"] == "malformed-file":  # every bad line up to a cap, and how many more there are
                for line in f["examples"]:
                    err.print(f"  {escape(line)}", highlight=False)
                if f["count"] > len(f["examples"]):
                    err.print(f"  ... and {f['count'] - len(f['examples'])} more", highlight=False)
    out.print(f"report: {out_dir / 'data_report.html'} (every affected row: {out_dir / 'data_report.json'})")
    if report["summary"]["error"]:
        raise typer.Exit(CHECK_FAILED)


@data_app.command("clean")
def data_clean(targets: list[str] = typer.Argument(..., help=_FILES_HELP),
               out_dir: Path = typer.Option(..., "--out", help="New folder for the cleaned files and changes.jsonl."),
               validation: Optional[str] = typer.Option(None, "--validation", help="Validation file (files only)."),
               test: Optional[str] = typer.Option(None, "--test", help="Test file (files only)."),
               redact_pii: bool = typer.Option(False, "--redact-pii", help="Replace personal data with typed placeholders."),
               keep_duplicates: bool = typer.Option(False, "--keep-duplicates", help="Do not drop exact duplicates / leakage."),
               no_fix_text: bool = typer.Option(False, "--no-fix-text", help="Do not repair mojibake and control characters."),
               text_column: str = typer.Option("text", help="Text column (files only; specs carry their own)."),
               label_column: str = typer.Option("label", help="Label column (files only).")) -> None:
    """Apply the fixes for what the doctor can point at into new files: repaired text, no empty or unlabelled rows,
    no same-label copies, no validation/test row that repeats (exactly or near-identically) an earlier split.
    Every dropped or changed row is listed in changes.jsonl; a spec gets a copy pointing at the cleaned files."""
    from tunelab.data.clean import CleanOptions, clean, write_clean_spec

    spec_path = targets[0] if targets[0].endswith((".yaml", ".yml")) and Path(targets[0]).is_file() else None
    if spec_path:
        from tunelab.spec import load_spec

        spec = load_spec(spec_path)
        sources = {k: v for k in ("train", "validation", "test") if (v := getattr(spec.data, k))}
        text_column = getattr(spec.data, "text_column", text_column)
        label_column = getattr(spec.data, "label_column", label_column)
    else:
        from tunelab.data.check import assign_splits

        sources = assign_splits(targets, validation, test)
    opts = CleanOptions(text_column=text_column, label_column=label_column, fix_text=not no_fix_text,
                        drop_duplicates=not keep_duplicates, redact_pii=redact_pii)
    result = clean(sources, out_dir, opts)
    for split, path in result.outputs.items():
        out.print(f"{split}: {path}")
    out.print(f"rows in {result.rows_in} = rows out {result.rows_out} + dropped {result.dropped}; "
              f"changed {result.changed}; every change: {out_dir / 'changes.jsonl'}")
    if spec_path:
        out.print(f"spec for the cleaned data: {write_clean_spec(Path(spec_path), result.outputs, out_dir)}")


@data_app.command("preview")
def data_preview(spec: Path = typer.Argument(..., help="A chat or completion run spec (YAML)."),
                 n: int = typer.Option(3, "-n", help="How many training examples to show."),
                 color: bool = typer.Option(True, help="Colour the trained tokens (otherwise mark them with ⟦ ⟧)."),
                 ) -> None:
    """Show training examples as the model will see them: the rendered template, with the tokens that
    carry the loss marked, and token counts."""
    from tunelab.spec import load_spec

    run_spec = load_spec(spec)
    if not run_spec.generative:
        raise typer.BadParameter(f"{spec}: a {run_spec.task} spec; preview shows chat and completion data")
    from tunelab import catalog
    from tunelab.lm.chat_format import preview
    from tunelab.tasks import get_task

    task_cls = get_task(run_spec.task)
    task = task_cls.from_spec(run_spec)
    base = catalog.resolve(run_spec.model.base)
    tokenizer = task.load_tokenizer(base)
    prepared = task_cls.prepare_data(run_spec, base, True, tokenizer=tokenizer)
    train = prepared.splits["train"]
    for i in range(min(n, len(train))):
        row = train[i]
        rendered = task.preview(tokenizer, row, run_spec)
        out.rule(f"example {i + 1} · {escape(row['location'])}")
        if color:
            out.print(preview(tokenizer, rendered, color=True), highlight=False)
        else:
            sys.stdout.write(preview(tokenizer, rendered, color=False) + "\n")
    out.print(f"{len(train)} training examples; loss on: {task.describe_loss(run_spec)}; "
              f"max_length {run_spec.data.max_length}")


@app.command()
def export(run: Path = typer.Argument(..., help="A finished run directory."),
           merge: bool = typer.Option(False, "--merge", help="Chat/completion runs: fold the adapter into the base "
                                      "weights (plain transformers folder)."),
           onnx: bool = typer.Option(False, "--onnx", help="Text classifiers: an ONNX Runtime folder (graph, "
                                     "tokenizer, labels, verification.json)."),
           quantize: Optional[str] = typer.Option(None, help="With --onnx: int8 also writes model.int8.onnx, kept "
                                                  "only if it gives the float model's label on >= 99% of the test "
                                                  "texts and loses <= 0.01 of the run's metric."),
           out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write it (default RUN/export/merged "
                                                  "or RUN/export/onnx)."),
           allow_worse: bool = typer.Option(False, "--allow-worse", help="Export a run that was not promoted (its "
                                            "fine-tuned model does not beat the untuned baseline).")) -> None:
    """Export a model, verified: it must reproduce the trained model on held-out data, or it is moved aside (exit 1)."""
    if merge == onnx:
        raise typer.BadParameter("say what to export: --merge (chat/completion runs) or --onnx (text classifiers)")
    if quantize and not onnx:
        raise typer.BadParameter("--quantize goes with --onnx", param_hint="--quantize")
    from tunelab.evaluate.gate import allow
    from tunelab.run import RunDir

    allow(RunDir(run).status(), run, allow_worse, "export")
    if onnx:
        from tunelab.export.onnx import ExportMismatch, export_onnx

        try:
            record = export_onnx(run, out_dir, quantize)
        except ExportMismatch as e:
            err.print(f"[bold red]verification failed:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(CHECK_FAILED)
        held = record["held_out_check"]
        out.print(f"exported to {record['folder']}: probe batches match PyTorch (max |diff| logits "
                  f"{record['probe_check']['max_logit_diff']:.1e})", highlight=False)
        if "skipped" in held:
            out.print(f"held-out check skipped: {escape(held['skipped'])}", highlight=False)
        else:
            out.print(f"{held['texts']} {held['split']} texts: max |diff| logits {held['max_logit_diff']:.1e}, same "
                      f"label {held['same_label']:.1%}, {held['metric']} {held['onnx']:.4f} (PyTorch "
                      f"{held['pytorch']:.4f})", highlight=False)
        if "int8_check" in record:
            q = record["int8_check"]
            verdict = "kept as model.int8.onnx" if q["passed"] else f"NOT kept (bar: {q['bar']})"
            out.print(f"int8: same label {q['agreement']:.1%}, {q['metric']} {q['int8_metric']:.4f} — {verdict}",
                      highlight=False)
        return
    from tunelab.export.merge import ParityError, export_merged

    try:
        parity = export_merged(run, out_dir)
    except ParityError as e:
        err.print(f"[bold red]parity check failed:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(CHECK_FAILED)
    out.print(f"exported to {parity['folder']}: {parity['identical']} of {parity['prompts']} held-out answers "
              f"identical, {parity['near_ties']} equal up to a near-tie, {parity['mismatches']} different")


@app.command()
def generate(run: Path = typer.Argument(..., help="A chat or completion run directory."),
             prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="A prompt; repeatable."),
             file: Optional[Path] = typer.Option(None, "--file", help="A .txt file, one prompt per line."),
             system: Optional[str] = typer.Option(None, help="System prompt (chat runs)."),
             max_new_tokens: int = typer.Option(128, help="Longest answer in tokens."),
             temperature: float = typer.Option(0.0, help="0 = greedy; above 0 samples.")) -> None:
    """Answer prompts with the fine-tuned model; one JSON object per prompt (JSON lines)."""
    from tunelab.evaluate.predict import read_texts
    from tunelab.lm.use import generate as run_generate

    if bool(prompt) == bool(file):
        raise typer.BadParameter("give either --prompt (one or more) or --file")
    prompts = list(prompt) if prompt else read_texts(file)
    for row in run_generate(run, prompts, max_new_tokens, system, temperature):
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


@app.command()
def chat(run: Path = typer.Argument(..., help="A chat run directory."),
         system: Optional[str] = typer.Option(None, help="System prompt."),
         max_new_tokens: int = typer.Option(256, help="Longest answer in tokens."),
         temperature: float = typer.Option(0.0, help="0 = greedy; above 0 samples.")) -> None:
    """Talk to the fine-tuned model. /reset clears the history, /exit (or Ctrl-D) quits."""
    from tunelab.lm.generation import generate_texts
    from tunelab.lm.use import load_generator, task_for

    model, tokenizer = load_generator(run)
    task = task_for(run, tokenizer)
    history: list[dict[str, str]] = []
    err.print("chat with the fine-tuned model; /reset clears the history, /exit quits")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = []
            continue
        if not line.strip():
            continue
        ids = task.prompt_ids(line, system=system, history=history)
        _, (answer,) = generate_texts(model, tokenizer, [ids], max_new_tokens, do_sample=temperature > 0,
                                      temperature=temperature or 1.0, show=False)
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer}]
        sys.stdout.write(f"model> {answer}\n")
        sys.stdout.flush()


@app.command("convert-weights")
def convert_weights(folder: Path = typer.Argument(..., help="A model or adapter folder you trust."),
                    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write a converted copy of the folder "
                                                           "here (without its pickle files) instead of converting "
                                                           "in place.")) -> None:
    """Convert a folder's pickle weights (.bin, .pt, .pth, .ckpt, .pkl) to safetensors, the only format tunelab
    loads: in place, beside them (the folder's other files untouched), or into --out. Reads tensors only (torch's
    weights_only loader), so a file that holds anything else is refused, never run."""
    from tunelab.run.weights import convert_weights as convert

    for source, dest in convert(folder, out_dir):
        out.print(f"{source} -> {dest}", highlight=False)
    out.print(f"{out_dir or folder}: safetensors weights written; tunelab loads it now", highlight=False)


@app.command()
def models() -> None:
    """List the bundled base models and data sets (usable without a model hub)."""
    from tunelab.catalog import bundled_summary
    from tunelab.data.sources import describe_bundled

    out.print("Bundled models:\n" + bundled_summary())
    from tunelab.data.conversations import describe_bundled_chat
    from tunelab.data.images import describe_bundled_images

    out.print("Bundled data sets:\n" + describe_bundled() + "\n" + describe_bundled_chat() + "\n"
              + describe_bundled_images())


from tunelab.auto.tune_cli import tune  # noqa: E402  (light: heavy imports happen inside the commands)
from tunelab.monitor.cli import monitor  # noqa: E402
from tunelab.serve.cli import serve  # noqa: E402

app.command("monitor")(monitor)
app.command("serve")(serve)
app.command("tune")(tune)


# Disk full, quota, permissions, read-only file system: the user's environment, not a bug (by name: not
# every platform defines every one).
ENVIRONMENT_ERRNOS = frozenset(code for code, name in errno.errorcode.items()
                               if name in ("ENOSPC", "EDQUOT", "EACCES", "EPERM", "EROFS"))


def _report_bug() -> None:
    """The traceback of an unexpected exception, and one line saying whose bug it is and where it goes."""
    traceback.print_exc()
    try:
        version = importlib.metadata.version("tunelab")
        urls = importlib.metadata.metadata("tunelab").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        version, urls = "unknown", []
    issues = next((url.split(",", 1)[1].strip() for url in urls if url.lower().startswith(("issues", "bug"))), None)
    where = issues or "the tunelab project's issue tracker"
    err.print(f"[bold red]internal error:[/] this is a bug in tunelab {version}, not in your input; please report it "
              f"at {escape(where)} with the command you ran and the traceback above (exit code {INTERNAL})",
              highlight=False)


def main() -> None:
    """The console script: run the command, and map what escapes it onto tunelab.run.exitcodes.

    A user error (USER_ERRORS, or an environment OSError such as a full disk) prints one line and exits
    USER_ERROR; Ctrl-C exits 130 without a traceback (training handles its own interrupt first and writes a
    checkpoint); any other exception is a bug: the traceback, one line saying so, exit INTERNAL. Exit codes
    set by the commands themselves (typer.Exit, click's usage errors) pass through unchanged."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' load reports ("classifier.weight MISSING") are expected when a new head is attached;
    # keep them out of the user's way unless asked for with TRANSFORMERS_VERBOSITY=info.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app()
    except KeyboardInterrupt:  # typer maps one inside a command to 130 itself; this catches the rest
        err.print("interrupted")
        sys.exit(interrupted())
    except Exception as e:  # click's normal exit is SystemExit, which passes through untouched
        stopped = getattr(sys.modules.get("tunelab.train.interrupt"), "Interrupted", None)
        if stopped is not None and isinstance(e, stopped):  # a signal during training (tune, auto): checkpointed
            err.print(f"[yellow]interrupted:[/] {escape(str(e))}", highlight=False)
            sys.exit(e.exit_code)
        if isinstance(e, _user_errors()):
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            sys.exit(USER_ERROR)
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            err.print(f"[bold red]error:[/] {escape(str(e))}; free some space or fix the permissions, then run the "
                      "command again", highlight=False)
            sys.exit(USER_ERROR)
        _report_bug()
        sys.exit(INTERNAL)


if __name__ == "__main__":
    main()
