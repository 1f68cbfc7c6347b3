"""`recolab.stacks`: SIGUSR2 prints every thread's stack and the process goes on, also after
Lightning has run (its signal connector resets handlers it did not see installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from recolab.stacks import DUMP_SIGNAL

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader
    from recolab.stacks import DUMP_SIGNAL, KeepStackDumps, dump_stacks_on_signal

    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dump_stacks_on_signal()
    callbacks = [KeepStackDumps()] if sys.argv[1] == "keep" else []
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(Plain(), DataLoader(torch.randn(16, 3), batch_size=8))
    os.kill(os.getpid(), DUMP_SIGNAL)
    print("still running")
    """
)


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(DUMP_SIGNAL is None, reason="no SIGUSR2 on this platform")
def test_the_dump_survives_a_lightning_run() -> None:
    r = _run("keep")
    assert r.returncode == 0 and "still running" in r.stdout, r.stderr[-3000:]
    assert "Current thread" in r.stderr and "in <module>" in r.stderr


@pytest.mark.skipif(DUMP_SIGNAL is None, reason="no SIGUSR2 on this platform")
def test_without_the_callback_lightning_resets_the_signal_and_it_ends_the_process() -> None:
    """Why `KeepStackDumps` exists: after `fit`, SIGUSR2 has its default action again."""
    r = _run("plain")
    assert r.returncode == -DUMP_SIGNAL and "still running" not in r.stdout, r.stderr[-3000:]
