"""MovieLens ratings as retrieval data (GroupLens, https://grouplens.org/datasets/movielens/).

`data.path` is a MovieLens folder or its ratings file:

- `ratings.csv` (ml-latest-small, ml-20m, ml-25m): header `userId,movieId,rating,timestamp`;
  genres from `movies.csv` (`movieId,title,genres`) beside it, if present;
- `ratings.dat` (ml-1m): lines `UserID::MovieID::Rating::Timestamp`; genres from `movies.dat`
  (`MovieID::Title::Genres`, latin-1) beside it, if present.

The ratings are converted once to parquet (pyarrow) under `cache_dir` (`recolab.data.source`:
an edited or replaced file is converted again). The cached table keeps every rating, in the source's row order, with columns
`user_id`, `item_id` (the movie id), `rating`, `timestamp`, `genres` (the source's `A|B|C`) and
`genre` (the first listed genre). Without a movies file both genre columns read `(unknown)`.

What counts as a positive: a rating >= `min_rating`. The default, 0.0, takes every rating as a
positive (rating a movie means having watched it: the implicit-feedback reading of MovieLens
used by most sequential and retrieval papers); `data.min_rating=4` keeps the liked movies only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recolab.data.datamodule import DataError
from recolab.data.retrieval import RetrievalDataModule
from recolab.data.source import cached_parquet, require

log = logging.getLogger(__name__)

#: Bump when the converted table changes, so caches are converted again.
LOADER_VERSION = 1
RATING_COLUMNS = ("userId", "movieId", "rating", "timestamp")
UNKNOWN_GENRE = "(unknown)"


def ratings_file(path: str | Path) -> Path:
    """The ratings file named by `data.path` (the file itself, or the one in the folder)."""
    p = require(path)
    if p.is_dir():
        for name in ("ratings.csv", "ratings.dat"):
            if (p / name).is_file():
                return p / name
        raise DataError(f"{p} (data.path): the folder holds neither ratings.csv nor ratings.dat")
    if p.suffix not in (".csv", ".dat"):
        raise DataError(f"{p} (data.path): expected a ratings .csv or .dat file")
    return p


def movies_file(ratings: Path) -> Path | None:
    candidate = ratings.with_name("movies" + ratings.suffix)
    return candidate if candidate.is_file() else None


def _first_bad_value(
    path: Path, column: pa.ChunkedArray, name: str, *, integer: bool, header_lines: int
) -> DataError:
    """A DataError naming the file, the column and the first value that is not a number."""
    values = pd.Series(column.to_numpy(zero_copy_only=False))
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() | (integer and numeric.notna() & (numeric != np.floor(numeric)))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        return DataError(
            f"{path}: column {name!r} must hold {'integers' if integer else 'numbers'}; line {i + 1 + header_lines} "
            f"has {values.iloc[i]!r} ({int(bad.sum())} bad value(s) in the column)"
        )
    return DataError(
        f"{path}: column {name!r} must hold {'integers' if integer else 'numbers'}, got {column.type}"
    )


def read_ratings(path: Path) -> pa.Table:
    """The raw ratings with columns userId, movieId, rating, timestamp, checked (file order kept)."""
    # Every column as text first: the type check can then quote the offending value and line.
    text_types = {c: pa.string() for c in RATING_COLUMNS}
    try:
        if path.suffix == ".csv":
            with path.open(encoding="utf-8", errors="replace") as f:
                header = f.readline().strip().split(",")
            missing = [c for c in RATING_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; the header has {header}")
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(RATING_COLUMNS), column_types=text_types
                ),
            )
            header_lines = 1
        else:
            # `UserID::MovieID::Rating::Timestamp`: pyarrow's reader takes one-character delimiters.
            data = path.read_bytes().replace(b"::", b"\t")
            table = pacsv.read_csv(
                pa.BufferReader(data),
                read_options=pacsv.ReadOptions(column_names=list(RATING_COLUMNS)),
                parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                convert_options=pacsv.ConvertOptions(column_types=text_types),
            )
            header_lines = 0
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: cannot parse the ratings ({e})") from e
    if table.num_rows == 0:
        raise DataError(f"{path}: the file holds no ratings")
    # Cast the text columns; a failed cast means a malformed value: find and quote it.
    typed = {}
    for name in RATING_COLUMNS:
        col = table.column(name)
        try:
            typed[name] = pc.cast(col, pa.int64() if name != "rating" else pa.float32())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise _first_bad_value(
                path, col, name, integer=name != "rating", header_lines=header_lines
            ) from None
    return pa.table(typed)


def read_genres(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(movie ids sorted, their `A|B|C` genre strings) from movies.csv or movies.dat."""
    if path.suffix == ".csv":
        try:
            table = pacsv.read_csv(
                path, convert_options=pacsv.ConvertOptions(column_types={"movieId": pa.string()})
            )
        except pa.ArrowInvalid as e:
            raise DataError(f"{path}: cannot parse the movies ({e})") from e
        missing = [c for c in ("movieId", "genres") if c not in table.column_names]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; the header has {table.column_names}"
            )
        ids_text = table.column("movieId")
        genres = np.asarray(table.column("genres").to_pylist(), dtype=object)
        header_lines = 1
    else:
        rows = [
            line.split("::")
            for line in path.read_text(encoding="latin-1").splitlines()
            if line.strip()
        ]
        if any(len(r) != 3 for r in rows):
            bad = next(i for i, r in enumerate(rows) if len(r) != 3)
            raise DataError(f"{path}: line {bad + 1} is not MovieID::Title::Genres")
        ids_text = pa.chunked_array([pa.array([r[0] for r in rows], pa.string())])
        genres = np.asarray([r[2] for r in rows], dtype=object)
        header_lines = 0
    try:
        ids = pc.cast(ids_text, pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        raise _first_bad_value(
            path, ids_text, "movieId", integer=True, header_lines=header_lines
        ) from None
    order = np.argsort(ids, kind="stable")
    return ids[order], genres[order]


def convert(ratings: Path, movies: Path | None) -> pa.Table:
    """The cached table (see the module docstring) from the source files."""
    raw = read_ratings(ratings)
    item = raw.column("movieId").to_numpy()
    genres = np.full(len(item), UNKNOWN_GENRE, dtype=object)
    if movies is not None:
        movie_ids, movie_genres = read_genres(movies)
        pos = np.clip(np.searchsorted(movie_ids, item), 0, max(len(movie_ids) - 1, 0))
        found = (movie_ids[pos] == item) if len(movie_ids) else np.zeros(len(item), bool)
        genres[found] = movie_genres[pos[found]]
        if (~found).any():
            log.warning(
                "%s: %d rating(s) of movies missing from %s: genre %s",
                ratings,
                int((~found).sum()),
                movies,
                UNKNOWN_GENRE,
            )
    else:
        log.warning("%s: no movies file beside it: every genre reads %s", ratings, UNKNOWN_GENRE)
    first = np.array([g.split("|", 1)[0] for g in genres], dtype=object) if len(genres) else genres
    return pa.table(
        {
            "user_id": raw.column("userId"),
            "item_id": raw.column("movieId"),
            "rating": raw.column("rating"),
            "timestamp": raw.column("timestamp"),
            "genres": pa.array(genres.tolist(), pa.string()),
            "genre": pa.array(first.tolist(), pa.string()),
        }
    )


def cached_movielens(path: str | Path, cache_dir: str | Path) -> tuple[Path, Path]:
    """(the ratings file, its parquet conversion under `cache_dir`), converting on first use."""
    ratings = ratings_file(path)
    movies = movies_file(ratings)
    out = cached_parquet(
        f"movielens-{ratings.parent.name}",
        lambda: convert(ratings, movies),
        cache_dir=cache_dir,
        files=[f for f in (ratings, movies) if f is not None],
        version=LOADER_VERSION,
    )
    return ratings, out


class MovieLensDataModule(RetrievalDataModule):
    """MovieLens as retrieval data (see the module docstring and `RetrievalDataModule`).

    Args:
        path: a MovieLens folder, or its `ratings.csv` / `ratings.dat`.
        cache_dir: where the parquet conversion is cached.
        min_rating: a rating >= this is a positive; 0.0 (default) takes every rating.
        **kwargs: `RetrievalDataModule` arguments (`history_len`, `min_interactions`,
            `item_features` among `genre` and `genres`, `batch_size`, ...).
    """

    def __init__(
        self, *, path: str, cache_dir: str, min_rating: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.source = MovieLensSource(path, cache_dir, float(min_rating))


class MovieLensSource:
    """The cached ratings that count as positives (a rating >= `min_rating`)."""

    def __init__(self, path: str, cache_dir: str, min_rating: float) -> None:
        self.path, self.cache_dir, self.min_rating = path, cache_dir, min_rating

    def prepare(self) -> None:
        cached_movielens(self.path, self.cache_dir)

    def load(self, columns: list[str]) -> tuple[str, pa.Table]:
        ratings, cached = cached_movielens(self.path, self.cache_dir)
        table = pq.read_table(cached)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DataError(
                f"{ratings}: no column(s) {missing} for data.item_features/user_features; MovieLens has {table.column_names}"
            )
        positive = pc.greater_equal(table["rating"], self.min_rating)
        kept = table.filter(positive)
        log.info(
            "%s: %d of %d ratings are >= %s (data.min_rating): positives",
            ratings,
            kept.num_rows,
            table.num_rows,
            self.min_rating,
        )
        return str(ratings), kept
