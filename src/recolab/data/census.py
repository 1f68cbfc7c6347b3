"""UCI Census-Income (KDD) as a two-task ranking data set: the MMoE paper's setup.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts"
(KDD 2018), Section 6.3, group 1: task `income` (total person income > 50K, `income_50k ==
'50000+.'`) and task `never_married` (`marital_stat == 'Never married'`); the other columns are
features.

The source is `../shared/data/census-income-kdd/census-income.test.gz` (see its SOURCE.md): UCI's
official test split, 99,762 rows, a headerless gzip CSV of 42 columns. The papers trained on
UCI's 199,523-row training split, which is not available here; this module splits the one file
into train / val / test by a permutation seeded with `split_seed` (default fractions 0.8 / 0.1 /
0.1), the same for every training seed, so seeds vary only the model's initialization and the
batch order.

Columns (names from SOURCE.md):
- features: the 27 text columns and the 5 integer code columns (`det_ind_code`, `det_occ_code`,
  `own_or_self`, `vet_benefits`, `year`: recodes, not quantities) are sparse ids; `age`,
  `wage_per_hour`, `capital_gains`, `capital_losses`, `stock_dividends`, `num_emp` and
  `weeks_worked` are dense, standardized with the training split's statistics;
- labels: `income` and `never_married` (0/1), derived from `income_50k` and `marital_stat`,
  which may not be features;
- `instance_weight` is the CPS sampling weight (how many people a row stands for). It is neither
  a feature nor a loss or metric weight: the models and metrics treat rows equally, as the
  papers' code does. It stays in the cached parquet file for analyses that need it.

The file is parsed once and cached as parquet under `cache_dir` (`recolab.data.source`: a changed
file is converted again).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recolab.data.datamodule import DataError, Fractions, RankDataModule
from recolab.data.source import cached_parquet, check_max_rows, require, select, split_column
from recolab.params import Count, Count0, checked

log = logging.getLogger(__name__)

#: Bump when the conversion's output changes, so caches are rebuilt.
CONVERTER_VERSION = 1

#: The 42 columns of the headerless file, in order (SOURCE.md, from keras-mmoe).
COLUMNS = (
    "age",
    "class_worker",
    "det_ind_code",
    "det_occ_code",
    "education",
    "wage_per_hour",
    "hs_college",
    "marital_stat",
    "major_ind_code",
    "major_occ_code",
    "race",
    "hisp_origin",
    "sex",
    "union_member",
    "unemp_reason",
    "full_or_part_emp",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "tax_filer_stat",
    "region_prev_res",
    "state_prev_res",
    "det_hh_fam_stat",
    "det_hh_summ",
    "instance_weight",
    "mig_chg_msa",
    "mig_chg_reg",
    "mig_move_reg",
    "mig_same",
    "mig_prev_sunbelt",
    "num_emp",
    "fam_under_18",
    "country_father",
    "country_mother",
    "country_self",
    "citizenship",
    "own_or_self",
    "vet_question",
    "vet_benefits",
    "weeks_worked",
    "year",
    "income_50k",
)
NUMERIC = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "num_emp",
    "weeks_worked",
)
CODES = ("det_ind_code", "det_occ_code", "own_or_self", "vet_benefits", "year")

INCOME_VALUES = {"- 50000.": 0.0, "50000+.": 1.0}
NEVER_MARRIED = "Never married"
#: label column -> the source column it is derived from.
LABEL_SOURCES = {"income": "income_50k", "never_married": "marital_stat"}
#: Never features: label sources, the labels themselves, and the sampling weight.
NOT_FEATURES = frozenset({*LABEL_SOURCES.values(), *LABEL_SOURCES, "instance_weight"})
SPLIT_COLUMN = "split"
#: Where `path: null` points: ../shared/data/census-income-kdd beside the repository (src layout).
DEFAULT_PATH = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "census-income-kdd"


def read_census_csv(path: Path) -> pd.DataFrame:
    """Parse the headerless gzip CSV; check its 42 columns and the label columns' values."""
    try:
        df = pd.read_csv(path, header=None, skipinitialspace=True, dtype=str, keep_default_na=False)
    except (
        OSError,
        ValueError,
        EOFError,
    ) as e:  # pandas raises ParserError (a ValueError) on ragged rows
        raise DataError(f"{path}: cannot be read as the Census-Income CSV ({e})") from e
    if df.shape[1] != len(COLUMNS):
        raise DataError(
            f"{path}: expected {len(COLUMNS)} comma-separated columns ({', '.join(COLUMNS)}), found {df.shape[1]}; "
            "a column is missing or extra (see the data set's SOURCE.md)"
        )
    df.columns = list(COLUMNS)
    df = df.apply(lambda c: c.str.strip())
    unknown = sorted(set(df["income_50k"]) - set(INCOME_VALUES))
    if unknown:
        raise DataError(
            f"{path}: column 'income_50k' (column 42) holds {unknown[:5]}, expected only {sorted(INCOME_VALUES)}"
        )
    if not (df["marital_stat"] == NEVER_MARRIED).any():
        raise DataError(
            f"{path}: column 'marital_stat' (column 8) never holds {NEVER_MARRIED!r}; are the columns shifted?"
        )
    for name in (*NUMERIC, *CODES, "instance_weight"):
        values = pd.to_numeric(df[name], errors="coerce")
        bad = values.isna()
        if bad.any():
            raise DataError(
                f"{path}: column {name!r} must be numeric; {int(bad.sum())} row(s) are not, "
                f"e.g. {df.loc[bad, name].iloc[0]!r} in row {int(np.flatnonzero(bad)[0]) + 1}"
            )
        df[name] = values.astype("float64" if name == "instance_weight" else "int64")
    df["income"] = df["income_50k"].map(INCOME_VALUES).astype("float32")
    df["never_married"] = (df["marital_stat"] == NEVER_MARRIED).astype("float32")
    return df


def cached_census(source: Path, cache_dir: str | Path) -> Path:
    """The source file converted to parquet under `cache_dir` (`recolab.data.source`)."""
    return cached_parquet(
        source.name.split(".")[0],
        lambda: pa.Table.from_pandas(read_census_csv(source), preserve_index=False),
        cache_dir=cache_dir,
        files=[source],
        version=CONVERTER_VERSION,
    )


class CensusSource:
    """The file's rows (the first `max_rows`, if set) with a `split` column: train / val / test
    by a permutation seeded with `split_seed`, cut at `fractions` (see `CensusDataModule`)."""

    def __init__(
        self,
        *,
        path: str,
        file: str,
        cache_dir: str,
        fractions: list[float],
        split_seed: int,
        max_rows: int | None,
    ) -> None:
        self.path, self.file, self.cache_dir = path, file, cache_dir
        self.fractions, self.split_seed, self.max_rows = fractions, split_seed, max_rows

    def raw_file(self) -> Path:
        folder = require(
            self.path,
            "folder",
            hint=". The Census-Income (KDD) data set is read from ../shared/data/census-income-kdd "
            "beside the project; see that folder's SOURCE.md",
        )
        holds = sorted(p.name for p in folder.iterdir())
        return require(folder / self.file, "file", "data.file", f" in {folder}; it holds {holds}")

    def prepare(self) -> None:
        cached_census(self.raw_file(), self.cache_dir)

    def load(self, columns: list[str]) -> tuple[str, pa.Table]:
        source = self.raw_file()
        table = pq.read_table(cached_census(source, self.cache_dir))
        if self.max_rows is not None:
            table = table.slice(0, self.max_rows)
        split = split_column(table.num_rows, self.fractions, self.split_seed)
        table = table.append_column(SPLIT_COLUMN, split)
        return str(source), select(str(source), table, columns)


class CensusDataModule(RankDataModule):
    """Census-Income (KDD), split from one file (see the module docstring).

    Args:
        path: the data set's folder; None for `DEFAULT_PATH`, `../shared/data/census-income-kdd`
            beside the repository.
        file: the gzip CSV inside `path`.
        cache_dir: where the parquet conversion is cached.
        fractions: train / val / test shares of the seeded permutation. A val share of 0 makes
            validation run on the test rows (for fixed-epoch benchmarks that have no validation
            split; do not select checkpoints on it).
        split_seed: seeds the permutation; the split does not change with the training seed.
        max_rows: read only the file's first `max_rows` rows (tests), or all rows if None.
        **kwargs: `RankDataModule` arguments (sparse, dense, tasks, batch sizes, ...); `split`
            is set here and may not be given.
    """

    @checked
    def __init__(
        self,
        *,
        path: str | None = None,
        file: str = "census-income.test.gz",
        cache_dir: str,
        fractions: Fractions = (0.8, 0.1, 0.1),
        split_seed: Count0 = 0,
        max_rows: Count | None = None,
        **kwargs: Any,
    ) -> None:
        if "split" in kwargs:
            raise ValueError(
                "data.split is not used by the census data: set data.fractions and data.split_seed"
            )
        super().__init__(split={"kind": "column", "column": SPLIT_COLUMN}, **kwargs)
        for group in ("sparse", "dense"):
            leaks = sorted(NOT_FEATURES & set(getattr(self, f"{group}_names")))
            if leaks:
                raise ValueError(
                    f"data.{group} lists {leaks}: label columns, their sources ({', '.join(f'{k} <- {v}' for k, v in LABEL_SOURCES.items())}) "
                    "and instance_weight may not be model inputs"
                )
        fractions = [float(f) for f in fractions]
        if fractions[0] <= 0 or fractions[2] <= 0:
            raise ValueError(
                f"data.fractions must give train and test a share > 0; got {fractions}"
            )
        self.fractions = fractions
        self.source = CensusSource(
            path=str(DEFAULT_PATH) if path is None else path,
            file=file,
            cache_dir=cache_dir,
            fractions=fractions,
            split_seed=split_seed,
            max_rows=check_max_rows(max_rows),
        )

    def _split(self, table: pa.Table) -> dict[str, pa.Table]:
        if self.fractions[1] > 0:
            return super()._split(table)
        col = table.column(SPLIT_COLUMN).to_numpy(zero_copy_only=False)
        train, test = (table.filter(pa.array(col == s)) for s in ("train", "test"))
        log.warning(
            "data.fractions %s has no validation share: validation runs on the test rows",
            self.fractions,
        )
        return {"train": train, "val": test, "test": test}
