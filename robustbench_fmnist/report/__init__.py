"""Reports: tidy rows in, tables, figures, markdown and HTML out."""

from __future__ import annotations

from robustbench_fmnist.report.bundle import Examples, ReportData, frame, read_data
from robustbench_fmnist.report.markdown import render_markdown
from robustbench_fmnist.report.tables import seed_mean, severity_table, summary_table, with_drops
from robustbench_fmnist.report.writer import rerender_report, write_report

__all__ = [
    "Examples",
    "ReportData",
    "frame",
    "read_data",
    "render_markdown",
    "rerender_report",
    "seed_mean",
    "severity_table",
    "summary_table",
    "with_drops",
    "write_report",
]
