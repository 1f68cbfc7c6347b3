"""The MovieLens loader: both file formats, the parquet cache, the rating threshold, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recolab.data.datamodule import DataError
from recolab.data.movielens import MovieLensDataModule, cached_movielens
from tests.conftest import shared_data

RATINGS_CSV = """userId,movieId,rating,timestamp
1,10,4.0,100
1,20,3.5,300
1,30,5.0,200
1,40,2.0,400
2,10,4.5,50
2,30,1.0,60
2,50,4.0,70
2,20,5.0,80
"""
MOVIES_CSV = """movieId,title,genres
10,"Heat, The (1995)",Action|Crime
20,Up (2009),Animation|Comedy
30,Alien (1979),Horror|Sci-Fi
40,Fargo (1996),Comedy|Crime
"""


def _folder(tmp_path: Path, ratings: str = RATINGS_CSV, movies: str | None = MOVIES_CSV) -> Path:
    folder = tmp_path / "ml-test"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(ratings)
    if movies is not None:
        (folder / "movies.csv").write_text(movies)
    return folder


def _dm(path: Path, cache: Path, **kw) -> MovieLensDataModule:
    args = dict(
        path=str(path),
        cache_dir=str(cache),
        min_interactions=3,
        history_len=4,
        batch_size=4,
        eval_batch_size=4,
    )
    return MovieLensDataModule(**(args | kw))


def test_csv_converted_once_with_genres_and_file_order(tmp_path):
    folder = _folder(tmp_path)
    ratings, cached = cached_movielens(folder, tmp_path / "cache")
    assert ratings == folder / "ratings.csv"
    table = pq.read_table(cached)
    assert table.column("user_id").to_pylist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert table.column("item_id").to_pylist() == [10, 20, 30, 40, 10, 30, 50, 20]
    assert table.column("genres").to_pylist()[:2] == ["Action|Crime", "Animation|Comedy"]
    assert table.column("genre").to_pylist()[:3] == ["Action", "Animation", "Horror"]
    assert table.column("genre").to_pylist()[6] == "(unknown)"  # movie 50 is not in movies.csv
    # a second call reuses the cache; a changed file gets a new one
    mtime = cached.stat().st_mtime_ns
    assert cached_movielens(folder / "ratings.csv", tmp_path / "cache")[1] == cached
    assert cached.stat().st_mtime_ns == mtime
    (folder / "ratings.csv").write_text(RATINGS_CSV + "3,10,4.0,1\n")
    os.utime(folder / "ratings.csv", ns=(mtime + 10**9, mtime + 10**9))
    again = cached_movielens(folder, tmp_path / "cache")[1]
    assert again != cached and pq.read_table(again).num_rows == 9


def test_dat_format_with_movies_dat(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text(
        "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n"
    )
    (folder / "movies.dat").write_bytes(
        "10::Caf\xe9 (1995)::Comedy|Drama\n20::Heat (1995)::Action\n".encode("latin-1")
    )
    _, cached = cached_movielens(folder, tmp_path / "cache")
    table = pq.read_table(cached)
    assert table.column("user_id").to_pylist() == [1, 1, 2]
    assert table.column("rating").to_pylist() == [5.0, 3.0, 4.0]
    assert table.column("timestamp").to_pylist()[0] == 978300760
    assert table.column("genre").to_pylist() == ["Comedy", "Action", "Comedy"]


def test_rating_threshold_selects_positives(tmp_path):
    folder = _folder(tmp_path)
    everything = _dm(folder, tmp_path / "cache")
    everything.setup()
    liked = _dm(folder, tmp_path / "cache", min_rating=4.0)
    liked.setup()
    assert everything.summary["interactions_read"] == 8
    # ratings >= 4: user 1 keeps 10, 30 (2 < 3: filtered out); user 2 keeps 10, 50, 20
    assert liked.summary["interactions_read"] == 5
    assert liked.summary["users_filtered"] == 1 and liked.summary["users"] == 1


def test_missing_column_names_file_and_column(tmp_path):
    folder = _folder(tmp_path, ratings=RATINGS_CSV.replace("timestamp", "time"))
    with pytest.raises(DataError, match=r"ratings\.csv: missing column\(s\) \['timestamp'\]"):
        _dm(folder, tmp_path / "cache").prepare_data()


def test_non_numeric_id_names_file_column_line_and_value(tmp_path):
    folder = _folder(tmp_path, ratings=RATINGS_CSV.replace("2,50,4.0,70", "2,abc,4.0,70"))
    with pytest.raises(
        DataError, match=r"ratings\.csv: column 'movieId' must hold integers; line 8 has 'abc'"
    ):
        _dm(folder, tmp_path / "cache").prepare_data()


def test_fractional_user_id_and_bad_rating_are_rejected(tmp_path):
    folder = _folder(tmp_path, ratings=RATINGS_CSV.replace("2,10,4.5,50", "2.5,10,4.5,50"))
    with pytest.raises(DataError, match=r"column 'userId' must hold integers; line 6 has '2\.5'"):
        cached_movielens(folder, tmp_path / "cache")
    folder = _folder(tmp_path / "b", ratings=RATINGS_CSV.replace("1,20,3.5,300", "1,20,good,300"))
    with pytest.raises(DataError, match=r"column 'rating' must hold numbers; line 3 has 'good'"):
        cached_movielens(folder, tmp_path / "cache")


def test_malformed_dat_line_and_missing_path(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::978300760\n1::20::3\n")
    with pytest.raises(DataError, match=r"ratings\.dat: cannot parse the ratings"):
        cached_movielens(folder, tmp_path / "cache")
    with pytest.raises(DataError, match=r"neither ratings\.csv nor ratings\.dat"):
        cached_movielens(tmp_path, tmp_path / "cache")
    with pytest.raises(DataError, match=r"nowhere.*no such file or folder"):
        cached_movielens(tmp_path / "nowhere", tmp_path / "cache")


def test_real_ml_latest_small(tmp_path):
    folder = shared_data("ml-latest-small")
    dm = _dm(
        folder, tmp_path / "cache", min_interactions=5, history_len=20, item_features=["genre"]
    )
    dm.setup()
    s = dm.summary
    assert s["interactions_read"] == 100_836 and s["users"] == 610  # every user rated >= 20 movies
    assert s["train_interactions"] == 100_836 - 2 * 610
    table, size = dm.model_inputs()["item_features"]["genre"]
    assert 15 < size <= 21  # at most 20 first-listed genres (+ OOV)
    assert table.shape == (dm.num_items + 1,) and bool(
        (table[1:] >= 1).all()
    )  # every corpus item has one
