"""Offline evaluation reports (markdown, JSON) and run comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def fmt(x: float | None) -> str:
    """A metric in a table: 4 decimals, `-` for a missing or NaN value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}"


def inline_html(text: str) -> str:
    """One line of the reports' markdown as HTML: escaped, `code` spans as <code>, **bold** as <b>."""
    import html
    import re

    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            escaped = html.escape(part)
            out.append(re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped))
    return "".join(out)


def fmt_interval(ci: tuple[float, float] | None) -> str:
    """`[low, high]`, or `-` where there is no interval."""
    if ci is None or any(math.isnan(x) for x in ci):
        return "-"
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def report_header(title: str, context: dict[str, Any]) -> list[str]:
    """A report's first markdown lines: the title, the run's context, the metrics heading."""
    return [
        f"# {title}",
        "",
        *[f"- {k}: `{v}`" for k, v in context.items()],
        "",
        "## Test metrics",
        "",
    ]


def write_json(path: Path, numbers: dict[str, Any]) -> None:
    """A report's `metrics.json`: indented, anything else than JSON's types as its `str`."""
    path.write_text(json.dumps(numbers, indent=2, default=str))
