"""A run: checks -> plan -> executor (local | Ray) -> task store -> assembly -> report (see experiment.py)."""
