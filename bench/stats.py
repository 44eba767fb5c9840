"""Medians, percentiles and spreads, the way the report prints them."""

import math
import statistics
from dataclasses import dataclass


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Runs:
    """One figure's value over several runs: median and min-max."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, fmt: str = "{:.1f}") -> str:
        low, high = min(self.values), max(self.values)
        return f"{fmt.format(self.median)} ({fmt.format(low)}-{fmt.format(high)})"
