"""Automation around a run: what tunelab works out for the user. The energy meter (energy.py) and the planner
(plan.py, with memory.py and probe.py); search and the zero -> few-shot -> LoRA -> full ladder will join them."""
