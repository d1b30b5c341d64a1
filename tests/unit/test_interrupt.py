"""The signal handling around training (tunelab.train.interrupt): the first SIGTERM/SIGINT only asks training to
stop at the next optimizer step; a second one exits at once with 128 + its number; handlers are put back."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from tunelab.run.exitcodes import interrupted
from tunelab.train.interrupt import Interrupted, stop_on_signals


def test_first_signal_is_a_request_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.requested()
        signal.raise_signal(signal.SIGTERM)  # delivered to this (main) thread before raise_signal returns
        assert stop.requested() and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_signal_exits_at_once() -> None:
    code = textwrap.dedent("""
        import signal, time
        from tunelab.train.interrupt import stop_on_signals
        with stop_on_signals() as stop:
            signal.raise_signal(signal.SIGINT)
            print("requested", stop.requested(), flush=True)
            signal.raise_signal(signal.SIGINT)
            print("still running", flush=True)
            time.sleep(5)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.splitlines() == ["requested True"]
    assert res.returncode == interrupted(signal.SIGINT) == 130


def test_interrupted_names_the_checkpoint_and_the_exit_code() -> None:
    e = Interrupted(signal.SIGTERM, "step-0000042")
    assert e.exit_code == 143
    assert "SIGTERM" in str(e) and "step-0000042" in str(e) and "--resume" in str(e)
