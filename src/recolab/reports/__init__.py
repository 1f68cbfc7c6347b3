"""Offline evaluation reports (markdown, JSON) and run comparison."""

from __future__ import annotations

import math


def fmt(x: float | None) -> str:
    """A metric in a table: 4 decimals, `-` for a missing or NaN value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}"
