"""A bare Lightning trainer and the smallest LightningModule, for tests of callbacks and hooks."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU `pl.Trainer` without logger, checkpoints, progress bar or model summary."""
    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**(defaults | kwargs))


class Plain(pl.LightningModule):
    """One linear layer trained on (B, 3) float batches by SGD."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)
