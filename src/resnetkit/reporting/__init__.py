"""Showing a run: the evaluation extras (per-class table, worst errors) and the HTML run report."""

from .extras import evaluation_extras, format_class_table
from .report import load_run, render_report

__all__ = ["evaluation_extras", "format_class_table", "load_run", "render_report"]
