"""Running recolab's real command line from a benchmark, and timing its training epochs.

`run_recolab(overrides)` runs `python -m recolab train <overrides>` in a subprocess (a temporary
folder as its working directory, the repository's `data/` as its data folder, no tracking) with
`EpochTimer` in place of the `epoch_throughput` callback, and returns what the timer wrote: per
epoch, the training seconds (`EpochThroughput`'s span: epoch start to the start of validation, so
evaluation is left out), the CPU seconds and minor page faults of rank zero's process over the
same span, its batches, and the samples trained on by all ranks; the test metrics; and the peak
resident memory of the process and of its reaped children (DataLoader workers).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from recolab.throughput import EpochThroughput

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class EpochTimer(EpochThroughput):
    """recolab's `EpochThroughput` (in its place in the config, so it still logs the rates) that
    also records each span of training: seconds, CPU seconds and minor page faults of this
    process, batches, and the samples of all ranks; at the end, with the test metrics and peak
    memory, as JSON (rank zero writes)."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = Path(out)
        self.epochs: list[dict[str, float]] = []
        self.cpu0 = 0.0
        self.batches = self.faults0 = 0

    @staticmethod
    def _faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.cpu0, self.batches, self.faults0 = time.process_time(), 0, self._faults()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.batches += 1

    def on_span(self, trainer: pl.Trainer, seconds: float, samples: int) -> None:
        self.epochs.append(
            {
                "seconds": seconds,
                "cpu_seconds": time.process_time() - self.cpu0,
                "samples": samples,
                "world_size": trainer.world_size,
                "batches": self.batches,
                "minor_faults": self._faults() - self.faults0,
            }
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.global_rank != 0:
            return
        record = {
            "epochs": self.epochs,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "maxrss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        }
        self.out.write_text(json.dumps(record))


def samples_per_sec(record: dict[str, Any]) -> float:
    samples = sum(e["samples"] for e in record["epochs"])
    return samples / sum(e["seconds"] for e in record["epochs"])


def samples_per_cpu_sec(record: dict[str, Any]) -> float:
    """Samples per CPU second of one process (rank zero's samples over its CPU time).

    On a machine shared with other work, a process's CPU time does not count the time it waited
    for a core, so this rate is what the process achieves per core it gets; wall-clock rates
    also carry the other processes' load.
    """
    samples = sum(e["samples"] / e.get("world_size", 1) for e in record["epochs"])
    return samples / sum(e["cpu_seconds"] for e in record["epochs"])


def run_recolab(overrides: list[str], *, threads: int, timeout: int = 1800) -> dict[str, Any]:
    """`python -m recolab train <overrides>` with `threads` torch threads per process; the timer's record."""
    with tempfile.TemporaryDirectory(prefix="recolab-bench-") as tmp:
        out = Path(tmp) / "timer.json"
        cmd = [
            sys.executable,
            "-m",
            "recolab",
            "train",
            *overrides,
            "logger=none",
            f"paths.data_dir={ROOT / 'data'}",
            f"hydra.run.dir={Path(tmp) / 'run'}",
            "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
            "callbacks.epoch_throughput._target_=_runs.EpochTimer",
            f"+callbacks.epoch_throughput.out={out}",
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "RECOLAB_CONFIG_DIR": str(ROOT / "configs"),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
        return json.loads(out.read_text())


def load_note() -> str:
    """The machine's load while a benchmark ran: other processes share these cores."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores at the end of the run"


def compose(overrides: list[str]):
    """The config `python -m recolab train <overrides>` would see (data under the repository's data/)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    tmp = tempfile.mkdtemp(prefix="recolab-bench-")
    with open_dict(cfg):
        cfg.paths.root_dir = tmp
        cfg.paths.output_dir = tmp
        cfg.paths.data_dir = str(ROOT / "data")
    return cfg
