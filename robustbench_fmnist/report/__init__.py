"""Reports: tidy rows in, tables and files out."""

from __future__ import annotations

from robustbench_fmnist.report.markdown import render_markdown
from robustbench_fmnist.report.tables import severity_table, summary_table, with_drops
from robustbench_fmnist.report.writer import load_report, results_frame, write_report

__all__ = [
    "load_report",
    "render_markdown",
    "results_frame",
    "severity_table",
    "summary_table",
    "with_drops",
    "write_report",
]
