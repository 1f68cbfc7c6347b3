"""Rows kept by a binary column: a model trained on the clicked impressions alone.

A conversion-rate (CVR) model is conventionally trained on the clicked impressions only, and
then scored over every impression: the sample-selection bias that ESMM (Ma et al., "Entire Space
Multi-Task Model", SIGIR 2018) removes. `data.select_rows: {where: click, splits: [train, val]}`
makes that baseline a real configuration: after the split, the named splits keep only the rows
whose binary column `where` (a task label or a meta column) is 1; the others (by default the
test split) keep every row, so the model is evaluated over the entire space.

A data module takes it by mixing `RowSelection` in before `RankDataModule` and calling
`select_rows_spec` in its constructor (`recolab.data.synthetic_video`, `recolab.data.ali_ccp`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from recolab.data.checks import DataError
from recolab.data.source import SPLITS

log = logging.getLogger(__name__)


def select_rows_spec(
    spec: Mapping[str, Any] | None, columns: Sequence[str]
) -> dict[str, Any] | None:
    """`data.select_rows` checked against the columns the data module loads (`columns`): None,
    or `{where: <column>, splits: [<split>, ...]}` (`splits` defaults to train and val)."""
    if not spec:
        return None
    spec = dict(spec)
    unknown = sorted(set(spec) - {"where", "splits"})
    if unknown or "where" not in spec:
        raise ValueError(
            "data.select_rows must be {where: <binary column>, splits: [train, val]}, got keys "
            f"{sorted(spec)}"
        )
    where = spec["where"]
    if where not in columns:
        raise ValueError(
            f"data.select_rows.where: {where!r} is not a column the data loads; name a task or "
            f"a data.meta column ({list(columns)})"
        )
    splits = list(spec.get("splits", ["train", "val"]))
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(
            f"data.select_rows.splits: expected a non-empty list of {list(SPLITS)}, got {splits}"
        )
    return {"where": str(where), "splits": splits}


class RowSelection:
    """Mixed in before `RankDataModule`: its `_split` keeps, in `self.select_rows["splits"]`,
    only the rows whose column `self.select_rows["where"]` is 1 (`select_rows_spec`)."""

    select_rows: dict[str, Any] | None = None
    source_path: str

    def _split(self, table: pa.Table) -> dict[str, pa.Table]:
        parts = super()._split(table)  # type: ignore[misc]
        if not self.select_rows:
            return parts
        where = self.select_rows["where"]
        for split in self.select_rows["splits"]:
            values = parts[split].column(where).to_numpy(zero_copy_only=False)
            odd = ~np.isin(values, (0, 1))
            if odd.any():
                raise DataError(
                    f"{self.source_path}: column {where!r} (data.select_rows.where) must be 0 or 1 "
                    f"in every row; {int(odd.sum())} rows of the {split} split have e.g. "
                    f"{values[odd][0]!r}"
                )
            keep = values == 1
            if not keep.any():
                raise DataError(
                    f"{self.source_path}: no row of the {split} split has {where} = 1 "
                    "(data.select_rows): nothing left to train or validate on"
                )
            log.info(
                "data.select_rows: the %s split keeps its %d of %d rows with %s = 1",
                split,
                int(keep.sum()),
                len(keep),
                where,
            )
            parts[split] = parts[split].filter(pa.array(keep))
        return parts
