"""A test-only callback: each rank writes the training rows it saw, per epoch, as JSON.

Used from the command line of a real DDP run:
`+callbacks.seen_rows._target_=tests.integration.seen_rows.SeenRows +callbacks.seen_rows.out=DIR`.
A row of the synthetic world is `request_id * slate_size + position - 1` (one slate per request).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class SeenRows(pl.Callback):
    def __init__(self, out: str, slate_size: int = 10) -> None:
        self.out = Path(out)
        self.slate_size = slate_size
        self.rows: list[int] = []
        self.steps = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        meta = batch["meta"]
        self.rows += (meta["request_id"] * self.slate_size + meta["position"] - 1).tolist()
        self.steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "steps": self.steps,
            "rows": self.rows,
        }
        (self.out / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.json").write_text(
            json.dumps(record)
        )
        self.rows, self.steps = [], 0
