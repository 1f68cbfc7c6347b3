"""Test-only helpers: a callback that records what training sees and fails or pauses a run on
request, and one torch thread for the tests that train (2 shared cores: a second intra-op thread
only waits, and runs compared bit for bit must use the same number of threads).

Added to a run with `+callbacks.probe._target_=tests.integration.probe.Probe` (the subprocess needs
the repository root on PYTHONPATH). What it records and when it pauses come from the environment,
so that runs compared with each other (killed, resumed, uninterrupted) share one config.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

#: For subprocesses: one intra-op thread, as `one_torch_thread` sets in the test process.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LOG = "RECOLAB_PROBE_LOG"  # append "global_step batch_digest loss" per training batch to this file
PAUSE_AFTER = "RECOLAB_PROBE_PAUSE_AFTER"  # after this global step: write <log>.paused, then sleep


class Probe(pl.Callback):
    """Args:
    raise_at_epoch: raise `RuntimeError` when this epoch starts (a run that fails mid-training).
    """

    def __init__(self, raise_at_epoch: int | None = None) -> None:
        self.raise_at_epoch = raise_at_epoch
        self._digest = ""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.raise_at_epoch is not None and trainer.current_epoch == self.raise_at_epoch:
            raise RuntimeError(f"probe: failing on purpose at epoch {trainer.current_epoch}")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        h = hashlib.sha1()
        for name in sorted(batch["features"]):
            h.update(batch["features"][name].numpy().tobytes())
        self._digest = h.hexdigest()[:16]

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        log = os.environ.get(LOG)
        if not log:
            return
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        with open(log, "a") as f:
            f.write(f"{trainer.global_step} {self._digest} {loss!r}\n")
        pause_after = os.environ.get(PAUSE_AFTER)
        if pause_after and trainer.global_step == int(pause_after):
            Path(log + ".paused").write_text(str(trainer.global_step))
            time.sleep(600)  # the test kills the process here


@pytest.fixture
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
