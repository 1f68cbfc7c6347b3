"""Offline evaluation reports (markdown, JSON) and run comparison."""

from __future__ import annotations

import math


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
