"""`tunelab plan` on the console: the memory breakdown, the methods table, and time and energy (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunelab.auto.memory import gib

PARTS = ("weights", "gradients", "optimizer", "activations", "transient", "overhead")


def memory_table(plan: Any) -> Table:
    """The spec's method's estimated peak, part by part, beside the probe's measured peak."""
    batch = plan.batch
    table = Table(title=f"peak memory estimate: {plan.method}, batch {batch['size']} x {batch['tokens_per_example']} "
                  f"tokens, on {plan.device}")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    for part in PARTS:
        table.add_row(part, gib(plan.memory.get(part, 0)))
    table.add_row("[bold]total[/]", f"[bold]{gib(plan.memory.get('total', 0))}[/]")
    if plan.probe and plan.probe.peak_bytes is not None:
        table.add_row(f"measured by the probe ({plan.probe.device})", gib(plan.probe.peak_bytes))
    return table


def methods_table(plan: Any) -> Table:
    """Every method the task allows: its estimated peak at the spec's batch size, whether it fits, the largest
    batch that does."""
    table = Table(title=f"methods within {gib(plan.budget_bytes)} ({plan.budget_source})")
    for col in ("method", "trainable params", "estimated peak", "fits", "largest batch", "note"):
        table.add_column(col, justify="right" if col in ("trainable params", "estimated peak", "largest batch") else "left")
    for row in plan.methods:
        fits = "[green]yes[/]" if row.fits else "[red]no[/]"
        table.add_row(row.method + (" (spec)" if row.method == plan.method else ""),
                      f"{row.trainable_params:,}" if row.trainable_params is not None else "–",
                      gib(row.peak_bytes) if row.peak_bytes is not None else "–", fits,
                      str(row.largest_batch) if row.largest_batch is not None else "–", escape(row.note))
    return table


def print_plan(console: Console, plan: Any) -> None:
    """The whole plan on CONSOLE."""
    console.print(f"{plan.task} on {escape(plan.base)}: {plan.params:,} parameters, {plan.trainable_params:,} trained "
                  f"by {plan.method}; length: {escape(plan.batch['length_source'])}", highlight=False)
    console.print(memory_table(plan))
    console.print(methods_table(plan))
    if plan.time:
        t = plan.time
        console.print(f"time: {t['total_seconds'] / 60:.1f} min ({t['epochs']} epoch(s) x {t['batches_per_epoch']} "
                      f"batches at {plan.probe.seconds_per_batch:.3f} s, validation {t['validation_seconds']:.0f} s); "
                      f"{escape(t['basis'])}", highlight=False)
    if plan.energy:
        e = plan.energy
        console.print(f"energy: {e['energy_kwh'] * 1000:.3g} Wh, {e['co2_kg'] * 1000:.3g} g CO2e at "
                      f"{e['grid_intensity_g_per_kwh']:g} g/kWh {escape('[' + e['method'] + ']')}; {escape(e['note'])}", highlight=False)
    for note in plan.notes:
        console.print(f"note: {escape(note)}", highlight=False)
