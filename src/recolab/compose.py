"""What the entry points share to compose a run: the configs' folder, and `build`, which turns a
config and a set-up data module into the model and the pipeline module (`recolab.train`,
`recolab.evaluate` and `recolab.serving` build them the same way)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

#: The repository's `configs/` (src layout: src/recolab/compose.py -> ../../configs).
CONFIG_DIR = os.environ.get("RECOLAB_CONFIG_DIR") or str(
    Path(__file__).resolve().parents[2] / "configs"
)


def build(cfg: DictConfig, datamodule: pl.LightningDataModule) -> tuple[Any, pl.LightningModule]:
    """The model and the pipeline module, given what the set-up data module provides.

    A data module offers `model_inputs()` and `module_inputs()` (e.g. `schema`, `num_items`);
    each target receives those its constructor accepts. Objects go in after instantiation:
    Hydra would turn a dataclass argument into a DictConfig.
    """

    def bind(node: DictConfig, available: dict[str, Any], **given: Any) -> Any:
        partial = instantiate(node, _partial_=True)
        params = inspect.signature(partial.func).parameters
        return partial(**{k: v for k, v in available.items() if k in params}, **given)

    model = bind(cfg.model, datamodule.model_inputs())
    module = bind(cfg.module, datamodule.module_inputs(), model=model)
    return model, module
