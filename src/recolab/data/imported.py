"""`data=imported`: a log written by `python -m recolab data import` (see `recolab.data.importer`).

`data.path` is the import's output folder; its `recolab_schema.yaml` says which columns are the
features, tasks and evaluation columns and how to split, so `+exp=mmoe data=imported
data.path=<folder>` trains on it with no more keys. Any of those keys given in the config
(`data.split=...`, `+data.dense=[...]`) wins over the folder's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from recolab.data.datamodule import DataError, ParquetDataModule
from recolab.data.importer import DATA_FILE, SCHEMA_FILE


class ImportedDataModule(ParquetDataModule):
    """Args:
    path: the folder `recolab data import` wrote (`data.parquet`, `recolab_schema.yaml`).
    split: the split, or None for the folder's.
    **kwargs: `RankDataModule` arguments; `sparse`, `dense`, `tasks` and `meta` default to the folder's.
    """

    def __init__(self, *, path: str, split: dict[str, Any] | None = None, **kwargs: Any) -> None:
        folder = Path(path)
        schema_file = folder / SCHEMA_FILE
        if not schema_file.is_file():
            raise DataError(
                f"{folder}: no {SCHEMA_FILE} here (data.path); point data.path at a folder written by "
                "`python -m recolab data import path=<log> schema=<yaml> out=<folder>`"
            )
        spec = yaml.safe_load(schema_file.read_text()) or {}
        for key in ("sparse", "dense", "tasks", "meta"):
            if spec.get(key) is not None:
                kwargs.setdefault(key, spec[key])
        super().__init__(path=str(folder / DATA_FILE), split=split or spec.get("split"), **kwargs)
