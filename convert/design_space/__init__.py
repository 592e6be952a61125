"""Design-space explorer: the SqueezeNet paper's sweeps, measured as accuracy against int8 size and latency.

``explore(SweepOptions(...)) -> results`` is the library entry point; ``tools/design_space.py`` parses
flags over it. Modules: variants (the paper's metaparameters and sweeps), counting (parameters, MACs),
explore (train -> convert -> measure per variant, the timing pass), results (results.csv/json, resume,
device timings), analysis (Pareto front, recommendation, trends), plots, report (report.md).
"""
from .explore import SweepOptions, explore
from .variants import SWEEPS, DesignSpaceError, Variant, parse_grid, select

__all__ = ["SWEEPS", "DesignSpaceError", "SweepOptions", "Variant", "explore", "parse_grid", "select"]
