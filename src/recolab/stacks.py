"""`kill -USR2 <pid>` makes a running recolab task print every thread's Python stack to its stderr.

A stuck run (a DDP rank waiting on a collective, a loader worker waiting on a lock) otherwise
says nothing about where it waits. Each task registers the handler when it starts as a program
(`python -m recolab <task>`, and each DDP rank Lightning restarts as `python -m recolab.train`);
the streaming module's loader workers, forked from a fork server, register it as they start. The process goes on running after the dump.
The handler is faulthandler's, which runs even while the main thread is inside a C call (a
collective, a lock), where a Python-level handler would wait for the call to return.

SIGUSR2 and not SIGUSR1: under SLURM, Lightning takes SIGUSR1 to requeue a job.
"""

from __future__ import annotations

import faulthandler
import signal

import pytorch_lightning as pl

DUMP_SIGNAL = getattr(signal, "SIGUSR2", None)  # absent on Windows
_registered = False


def dump_stacks_on_signal() -> None:
    """Print all threads' stacks to stderr on SIGUSR2 (where the platform has it)."""
    global _registered
    if DUMP_SIGNAL is not None:
        # faulthandler installs its handler only when the signal is not registered yet: drop the
        # registration first, so that this also puts back a handler someone else has replaced.
        faulthandler.unregister(DUMP_SIGNAL)
        faulthandler.register(DUMP_SIGNAL, all_threads=True)
        _registered = True


class KeepStackDumps(pl.Callback):
    """Registers the SIGUSR2 handler again after each Lightning run (fit, validate, test).

    At the end of a run Lightning's signal connector puts back the handlers it found in Python's
    signal table when the run began. A handler installed by faulthandler is not in that table
    (it holds SIG_DFL for SIGUSR2), so Lightning sets SIGUSR2 back to its default action, which
    ends the process: the next `kill -USR2` would kill the run instead of showing its stacks.
    Callbacks' `teardown` comes after Lightning's own. Does nothing where no task registered it.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if _registered:
            dump_stacks_on_signal()
