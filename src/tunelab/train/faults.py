"""Fault injection: SIGKILL this process at a named point, so tests can prove that resume is exact.

A kill from outside lands wherever the scheduler happens to be, so a test built on it cannot say which
moments it covered. Instead the environment variable TUNELAB_FAULT names one point and how often to pass it
first:

    TUNELAB_FAULT=step:13                 kill right after the 13th optimizer step of this process
    TUNELAB_FAULT=checkpoint-weights:2    kill inside the 2nd checkpoint write, its weights half-way on disk
    TUNELAB_FAULT=checkpoint-written:1    kill after a checkpoint folder is complete, before its pointer moves
    TUNELAB_FAULT=checkpoint-pointed:3    kill after the 3rd pointer update, before old checkpoints are pruned
    TUNELAB_FAULT=epoch:2                 kill after the 2nd epoch of this process ends (checkpoint written); in a
                                          search, whose trials run in one process, that names one trial's epoch

The kill is a real SIGKILL of the real process (no cleanup handler runs), exactly what an out-of-memory kill
or a preempted machine does. Unset, `point` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "TUNELAB_FAULT"
_passed: dict[str, int] = {}


def point(name: str) -> None:
    """Count one pass through point NAME; SIGKILL the process when TUNELAB_FAULT says this is the pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, count = spec.partition(":")
    if where != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
