"""The paper's few-shot protocol as a grid of bundle runs, with its summary table and figures."""

from bundle.experiments.grid import DATASETS, DEFAULT_METHOD, METHODS, GridSettings, Run, execute, plan_grid, run_grid
from bundle.experiments.summary import (
    collect,
    compute_time,
    load_result,
    paired_test,
    per_seed_table,
    recorded_protocol,
    summary_table,
    write_markdown_report,
)

__all__ = [
    "DATASETS",
    "DEFAULT_METHOD",
    "METHODS",
    "GridSettings",
    "Run",
    "collect",
    "compute_time",
    "execute",
    "load_result",
    "paired_test",
    "per_seed_table",
    "recorded_protocol",
    "plan_grid",
    "run_grid",
    "summary_table",
    "write_markdown_report",
]
