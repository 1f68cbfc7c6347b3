"""`recolab.stacks`: SIGUSR2 prints every thread's stack and the process goes on, also after
Lightning has run (its signal connector resets handlers it did not see installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from recolab.stacks import DUMP_SIGNAL
from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch.utils.data import DataLoader
    from recolab.stacks import DUMP_SIGNAL, KeepStackDumps, dump_stacks_on_signal
    from tests.lightning_helpers import Plain, quiet_trainer

    dump_stacks_on_signal()
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[KeepStackDumps()] if sys.argv[1] == "keep" else []
    )
    trainer.fit(Plain(), DataLoader(torch.randn(16, 3), batch_size=8))
    os.kill(os.getpid(), DUMP_SIGNAL)
    print("still running")
    """
)


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,  # `tests` importable
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
