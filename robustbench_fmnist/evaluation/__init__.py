"""Evaluation: cells, the sweep, inference, test-time adaptation, scoring, metrics and throughput."""
