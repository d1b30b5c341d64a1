"""SIGTERM and SIGINT during training: finish the optimizer step, write a checkpoint, stop; a second signal
stops at once.

A preempted machine or a scheduler sends SIGTERM and waits a few seconds before SIGKILL; Ctrl-C sends
SIGINT. Either way the work so far should survive: the loop asks `requested()` after every optimizer step,
and when it is true it saves a `LATEST` checkpoint (which `--resume` continues exactly) and raises
`Interrupted`. The CLI marks run.json `interrupted` and exits 128 + the signal's number
(tunelab.run.exitcodes). A second signal means "now": the process exits immediately with that code; the
checkpoint on disk is the previous complete one (writes are atomic), so nothing is corrupted.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from tunelab.run.exitcodes import interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; `--resume` continues it."""

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after writing checkpoint {checkpoint}; continue with --resume"
                         if checkpoint else f"stopped by {name}")

    @property
    def exit_code(self) -> int:
        return interrupted(self.signum)


class StopRequest:
    """Which signal asked training to stop (None while none has)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: leave now
            os._exit(interrupted(signum))
        self.signum = signum

    def requested(self, accelerator: Any = None) -> bool:
        """True when a signal arrived; under several processes, when one arrived in any of them, so all stop
        at the same step and none waits in a collective the others have left."""
        flag = self.signum is not None
        if accelerator is not None and accelerator.num_processes > 1:
            import torch

            t = torch.tensor([float(flag)], device=accelerator.device)
            flag = bool(accelerator.reduce(t, reduction="sum").item() > 0)
            if flag and self.signum is None:
                self.signum = signal.SIGTERM  # another process got the signal
        return flag


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the SIGTERM/SIGINT handlers for the duration of training (the main thread only: Python delivers
    signals there; elsewhere the request simply never fires) and put the previous handlers back after."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, request._handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
