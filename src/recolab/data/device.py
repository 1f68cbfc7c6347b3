"""Training data that lives on the accelerator: the in-memory training split moved there once.

`data.device_resident` (in-memory data modules, `recolab.data.datamodule.RankDataModule`):

- `auto` (the default): on when the trainer trains on a CUDA device and the training split's
  columns take at most `AUTO_FRACTION` of the device's free memory (under DDP, on every rank:
  the ranks shard one permutation, so they decide together);
- `true`: on, on whatever device the trainer trains (on a CPU the columns stay where they are
  and the same code path runs, which is how the tests exercise it); on a CUDA device whose free
  memory cannot hold the split it fails before training, with both sizes;
- `false`: the host path: batches sliced in host memory, pinned when training on a GPU
  (`data.pin_memory`), and copied to the device at each step.

On, the training split's column tensors are copied to the device when the training loader is
built (once per fit), and each batch is sliced there by index (`ColumnarBatches`, one
`index_select` per column), with the epoch's row permutation drawn on the device too, by a
`torch.Generator` of that device seeded `data.seed + epoch`: no host-to-device copy, pinning or
loader worker per step. Validation and test splits keep the host path (read once per epoch).

The permutation. On a CPU the device generator is the CPU generator: the batches are those of the
host path, row for row. On a CUDA device, `torch.randperm` draws another permutation than the CPU
generator for the same seed (another algorithm: random keys sorted on the device), as uniform and
as reproducible: a run's batches are the same from run to run and across a resume on the same kind
of device (`ckpt_path=last` redraws the epoch's permutation from `seed + epoch` and skips the
batches the checkpoint counted, `recolab.data.resumable`), but not those of the host path. A run
checkpointed on the device path and resumed on the host path (or the other way round) finishes
its epoch with the other permutation's remaining batches: every step still takes a batch of
distinct rows, but that epoch covers its rows only approximately.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from recolab.data.columnar import Columns

log = logging.getLogger(__name__)

#: `auto` moves the training split to a CUDA device when it takes at most this share of the
#: device's free memory (the rest is for the model, activations, optimizer state and evaluation).
AUTO_FRACTION = 0.5

_WORDS = {"auto": "auto", "true": True, "false": False}


def parse_setting(value: Any) -> bool | str:
    """`data.device_resident` as True, False or "auto"; ValueError naming the key otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _WORDS:
        return _WORDS[value.lower()]
    raise ValueError(f"data.device_resident must be auto, true or false, got {value!r}")


def columns_nbytes(columns: Columns) -> int:
    """Bytes held by a split's column tensors."""
    return sum(t.numel() * t.element_size() for group in columns.values() for t in group.values())


def decide(setting: bool | str, device: torch.device, nbytes: int, free: int | None) -> bool:
    """Whether the split goes to `device` (pure: the rule, given the device's free bytes).

    Args:
        setting: the parsed `data.device_resident`.
        device: the device the trainer trains on.
        nbytes: the split's bytes (`columns_nbytes`).
        free: the device's free bytes, or None where unknown (a CPU).

    Raises:
        ValueError: `true` on a device whose free memory is known to be smaller than the split.
    """
    if setting is False:
        return False
    if setting == "auto":
        return device.type == "cuda" and free is not None and nbytes <= AUTO_FRACTION * free
    if free is not None and nbytes > free:
        raise ValueError(
            f"data.device_resident=true: the training split takes {nbytes / 2**30:.2f} GiB, "
            f"more than the {free / 2**30:.2f} GiB free on {device}; set data.device_resident=auto "
            "(moved only when it fits) or false (batches copied from host memory)"
        )
    return True


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device in bytes; None for other devices."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def resolve(setting: Any, trainer: Any, columns: Columns) -> torch.device | None:
    """The device the training split should live on, or None for the host path (see the module
    docstring). Under DDP the ranks agree: all on, or all off."""
    setting = parse_setting(setting)
    if setting is False:
        return None
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    nbytes = columns_nbytes(columns)
    on = decide(setting, device, nbytes, free_bytes(device))
    if setting == "auto" and device.type == "cuda" and trainer.world_size > 1:
        on = bool(trainer.strategy.reduce_boolean_decision(on, all=True))  # all ranks, or none
    if on:
        log.info(
            "training split on %s: %.2f GiB of columns, batches sliced there (data.device_resident=%s)",
            device,
            nbytes / 2**30,
            setting,
        )
    return device if on else None


def to_device(columns: Columns, device: torch.device) -> Columns:
    """The split's columns copied to `device` (the same tensors where they are there already)."""
    return {g: {k: t.to(device) for k, t in group.items()} for g, group in columns.items()}
