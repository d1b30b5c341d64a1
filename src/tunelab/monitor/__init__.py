"""`tunelab monitor`: logged inference traffic vs the run's training data, with alerts.

Public API: `monitor_run` (the report), `parse_since`, `default_db_url`, `read_requests`, `requests_table`;
the checks themselves are pure functions in `tunelab.monitor.drift`. Importing this package is cheap: the
heavy modules load when `monitor_run` is called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["monitor_run", "parse_since", "default_db_url", "read_requests", "requests_table"]


def __getattr__(name: str) -> Any:
    if name == "monitor_run":
        from tunelab.monitor.report import monitor_run

        return monitor_run
    if name in ("parse_since", "default_db_url", "read_requests", "requests_table"):
        from tunelab.monitor import log

        return getattr(log, name)
    raise AttributeError(name)
