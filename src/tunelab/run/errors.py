"""RunError: a run that cannot be used or started as asked. Its own module, importing nothing, so the
lowest layers (the weights guard, model loaders) can raise it without reaching the spec and task registry."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run that cannot be used or started as asked (not a run, not finished, exists already, spec changed)."""
