"""Checkpoints a killed run can be resumed from (`configs/callbacks/default.yaml`'s `model_checkpoint`).

`RunCheckpoint` is Lightning's `ModelCheckpoint` with three changes:

- **`last.ckpt` is the newest checkpoint.** Lightning (2.6) writes `last.ckpt` at epoch end only
  when a top-k file was written at the same step (`_last_global_step_saved == global_step` in
  `on_validation_end` and `on_train_epoch_end`), so with `save_top_k: 1` an epoch that scored
  worse left `last.ckpt` a copy of the best epoch's. Here every epoch end (every validation, where
  checkpoints follow validation) writes it too; step checkpoints (`every_n_train_steps`) already
  wrote it.
- **A file is written whole or not at all.** Lightning's `TorchCheckpointIO` writes through an
  fsspec transaction: a temporary file in `$TMPDIR`, moved onto the target when complete, which
  across filesystems is a copy then a delete, so a kill during the copy left a truncated file
  under the real name and the temporary one in `$TMPDIR`. `AtomicCheckpointIO` writes
  `<folder>/.<name>.<pid>.partial`, fsyncs it and renames it onto the name (`os.replace`, atomic
  within a folder), then fsyncs the folder. A kill leaves the previous file intact and at most a
  hidden `.partial` file beside it, which the run's next start in that folder deletes.
- **The run folder says whose checkpoints they are.** When fitting starts, `run.json` (the
  resolved config and MLflow run id, the checkpoint's own `recolab` entry without the data
  state) is written in the run's folder, beside `checkpoints/`, so `ckpt_path=last` finds the
  run without unpickling any checkpoint (`recolab.resume`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

#: The run's identity, in its folder (`<run folder>/run.json`, beside `checkpoints/`).
RUN_FILE = "run.json"
PARTIAL_SUFFIX = ".partial"


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)` into a temporary file beside it, fsync, rename it into place.

    Readers see the old file or the new one, never a part; a failure removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(partial, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` writing local files beside their target and renaming them into place."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if not _is_local_file_protocol(path):  # object stores: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        if storage_options is not None:
            raise TypeError(f"storage_options is not supported by {type(self).__name__}")
        write_atomically(path, lambda f: torch.save(checkpoint, f))


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` is always the newest checkpoint, written atomically,
    with `run.json` beside the checkpoint folder (see the module docstring)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one chosen by the user
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if stage != "fit" or not trainer.is_global_zero or not self.dirpath:
            return
        if not _is_local_file_protocol(self.dirpath):
            return
        folder = Path(self.dirpath)
        for partial in folder.glob(f".*{PARTIAL_SUFFIX}"):  # left by a killed write of this run
            log.info("removing %s, a checkpoint write that never finished", partial)
            partial.unlink(missing_ok=True)
        info = getattr(pl_module, "run_info", None) or {}
        if info.get("config"):
            write_run_file(folder.parent, info["config"], info.get("run_id") or "")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        # Skipped when a checkpoint (and with it last.ckpt) was written at this step already,
        # outside fitting and during the sanity check.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def write_run_file(run_dir: str | Path, config_yaml: str, run_id: str) -> Path:
    """`<run_dir>/run.json`: the run's resolved config (as in its checkpoints) and MLflow run id."""
    path = Path(run_dir) / RUN_FILE
    body = {
        "config": OmegaConf.to_container(OmegaConf.create(config_yaml)),
        "run_id": run_id,
    }
    write_atomically(path, lambda f: f.write(json.dumps(body, indent=1).encode()))
    return path


def read_run_file(run_dir: str | Path) -> dict[str, Any]:
    """The `run.json` of a run folder; raises `OSError` or `ValueError` when missing or unreadable."""
    body = json.loads((Path(run_dir) / RUN_FILE).read_text())
    if not isinstance(body, dict) or not isinstance(body.get("config"), dict):
        raise ValueError("no config mapping")
    return body
