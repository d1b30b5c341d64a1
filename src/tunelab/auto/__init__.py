"""Automation around a run: what tunelab works out for the user. For now the energy meter (energy.py);
search, the zero -> few-shot -> LoRA -> full ladder and the planner will join it."""
