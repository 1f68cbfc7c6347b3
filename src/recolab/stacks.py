"""`kill -USR2 <pid>` makes a running recolab task print every thread's Python stack to its stderr.

A stuck run (a DDP rank waiting on a collective, a loader worker waiting on a lock) otherwise
says nothing about where it waits. Each task registers the handler when it starts as a program
(`python -m recolab <task>`, and each DDP rank Lightning restarts as `python -m recolab.train`);
DataLoader workers started by `fork` inherit it. The process goes on running after the dump.

SIGUSR2 and not SIGUSR1: under SLURM, Lightning takes SIGUSR1 to requeue a job.
"""

from __future__ import annotations

import faulthandler
import signal

DUMP_SIGNAL = getattr(signal, "SIGUSR2", None)  # absent on Windows


def dump_stacks_on_signal() -> None:
    """Print all threads' stacks to stderr on SIGUSR2 (where the platform has it)."""
    if DUMP_SIGNAL is not None:
        faulthandler.register(DUMP_SIGNAL, all_threads=True)
