"""Training curves: the validation metrics of every epoch, as a plot in the run's report.

The values are those the run printed and logged at each validation (`recolab.console.EpochSummary`
keeps them, in checkpoints too, so a resumed run's curves start at its first epoch). The plot has
one panel per metric (the validation loss, then each metric the console line shows: AUC, GAUC,
XAUC, recall@K, ...), one line per task; the best checkpoint's epoch is marked where known.
`append_training_curves` writes `training_curves.png` and `training_curves.json` beside the report
and adds a section to `report.md` and, where there is one, `report.html`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PNG = "training_curves.png"
JSON = "training_curves.json"


def panels(history: list[dict[str, Any]], names: Iterable[str]) -> dict[str, dict[str, list]]:
    """`{metric: {task: [(epoch, value), ...]}}` for the chosen `val/...` names (`val/loss`: task
    ``); epochs count from 1, as the console prints them."""
    out: dict[str, dict[str, list]] = {}
    for name in names:
        parts = name.split("/")
        metric, task = ("/".join(parts[1:-1]), parts[-1]) if len(parts) >= 3 else (parts[-1], "")
        points = [
            (h["epoch"] + 1, h["metrics"][name]) for h in history if name in h.get("metrics", {})
        ]
        if points:
            out.setdefault(metric, {})[task] = points
    return out


def plot(curves: dict[str, dict[str, list]], best_epoch: int | None = None) -> plt.Figure:
    n = len(curves)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (metric, by_task) in zip(axes.flat, curves.items()):
        for task, points in by_task.items():
            epochs, values = zip(*points)
            ax.plot(epochs, values, "o-", ms=3, label=task or metric)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#999", ls="--", lw=1, label="tested checkpoint")
        ax.set(title=f"validation {metric}", xlabel="epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def append_training_curves(
    report_dir: str | Path,
    history: list[dict[str, Any]],
    names: Iterable[str],
    *,
    best_epoch: int | None = None,
) -> list[Path]:
    """Write the plot and its numbers beside the report and add a "Training curves" section to
    `report.md` (and `report.html`, where the report has one); return the new files. Nothing
    where no validation ran."""
    curves = panels(history, names)
    if not curves:
        return []
    out = Path(report_dir)
    fig = plot(curves, best_epoch)
    png = out / PNG
    fig.savefig(png, dpi=100)
    plt.close(fig)
    numbers = out / JSON
    numbers.write_text(json.dumps({"best_epoch": best_epoch, "history": history}, indent=2))
    text = (
        "Validation metrics at the end of every epoch (the values the console printed and MLflow "
        "holds as each metric's history)"
        + (
            f"; the dashed line marks epoch {best_epoch}, the checkpoint tested."
            if best_epoch
            else "."
        )
    )
    md = out / "report.md"
    if md.is_file():
        with md.open("a") as f:
            f.write(f"\n## Training curves\n\n{text}\n\n![training curves]({PNG})\n")
    page = out / "report.html"
    if page.is_file():
        image = base64.b64encode(png.read_bytes()).decode()
        with page.open("a") as f:
            f.write(
                f"<h2>Training curves</h2><p>{text}</p>"
                f"<figure><img alt='training curves' src='data:image/png;base64,{image}'></figure>"
            )
    return [png, numbers]
