"""Automation around a run: what tunelab works out for the user. The energy meter (energy.py), the defaults
that fit the model (defaults.py), the planner (plan.py, with memory.py and probe.py), the search of
`tunelab tune` (tune.py, search_space.py) and the zero -> few-shot -> LoRA -> full ladder of `tunelab auto`
(ladder.py, prompted.py).

`tunelab.auto(spec, budget)` climbs the ladder. `tunelab.auto` is this package (Python binds a loaded
subpackage to its parent's attribute, so a function exported under the same name would be replaced as soon
as `tunelab.auto.energy` is imported); the package is therefore callable, and calling it calls `auto`
below. Nothing heavy is imported until it is called.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.auto.ladder import AutoResult


def auto(spec: Any, budget: str | float = "30m", **options: Any) -> "AutoResult":
    """Climb SPEC's ladder within BUDGET; see tunelab.auto.ladder.auto for the options."""
    from tunelab.auto.ladder import auto as climb

    return climb(spec, budget, **options)


class _CallablePackage(types.ModuleType):
    def __call__(self, spec: Any, budget: str | float = "30m", **options: Any) -> "AutoResult":
        return auto(spec, budget, **options)


sys.modules[__name__].__class__ = _CallablePackage
