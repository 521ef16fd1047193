"""Visual report: PNG montages (`montage`), plots (`plots`), self-contained HTML (`html`)."""

from clinfuse.report.html import Table, format_stat, write_report
from clinfuse.report.montage import comparison_montage, save_montage
from clinfuse.report.plots import (
    save_metric_plot,
    save_reliability_diagram,
    save_reliability_panels,
)

__all__ = [
    "Table",
    "comparison_montage",
    "format_stat",
    "save_metric_plot",
    "save_montage",
    "save_reliability_diagram",
    "save_reliability_panels",
    "write_report",
]
