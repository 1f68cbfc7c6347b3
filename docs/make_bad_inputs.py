"""Write docs/bad_inputs.md: every bad input tried, and the first line of the error it gives.

Each case runs for real (a composed config given to `train`, a malformed parquet or CSV file, a
tracking server that is down or is not MLflow, a tampered checkpoint), so the table cannot drift
from the code. Run: .venv/bin/python docs/make_bad_inputs.py  (about a minute)
"""

from __future__ import annotations

import http.server
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recolab.data.datamodule import ParquetDataModule  # noqa: E402
from recolab.data.importer import import_log  # noqa: E402
from recolab.data.streaming import StreamingParquetDataModule  # noqa: E402
from recolab.evaluate import load_checkpoint  # noqa: E402
from recolab.train import train  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="recolab-bad-inputs-"))
TINY = [
    "data.num_users=300",
    "data.num_items=200",
    "data.num_impressions=6000",
    "data.batch_size=256",
    "data.eval_batch_size=1024",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "callbacks.progress_bar.refresh_rate=0",
]
ROWS: list[tuple[str, str, str]] = []


def cfg_for(overrides: list[str], name: str, searchpath: Path | None = None) -> DictConfig:
    root = TMP / name
    root.mkdir(parents=True, exist_ok=True)
    GlobalHydra.instance().clear()
    extra = [f"hydra.searchpath=[file://{searchpath}]"] if searchpath else []
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*extra, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(root / "out")
        cfg.paths.data_dir = str(TMP / "data")
    return cfg


def case(area: str, what: str, run: Callable[[], object]) -> None:
    """Run one bad input; record the first line of the error it raises (the run must fail)."""
    try:
        run()
    except BaseException as e:  # noqa: BLE001 (SystemExit included: the CLI's usage errors)
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if type(e).__name__ == "InstantiationException":  # Hydra's: the cause is on line 2
            text = " ".join(str(e).split())
        message = re.sub(
            r"127\.0\.0\.1:(?!9\b)\d+",
            "127.0.0.1:<port>",
            f"{type(e).__name__}: {text}".replace(str(TMP), "<tmp>").replace(f"{ROOT}/", ""),
        )
        message = re.sub(  # the run.lock owner: which process, machine and time vary per run
            r"process \d+ on \S+, started [\d-]+ [\d:]+",
            "process <pid> on <host>, started <time>",
            message,
        )
        ROWS.append((area, what, message))
        print(f"[{area}] {what}\n    {message}", file=sys.stderr)
        return
    raise AssertionError(f"[{area}] {what}: did not fail")


def train_with(*overrides: str, name: str = "c") -> Callable[[], object]:
    return lambda: train(cfg_for(["+exp=mmoe", *TINY, *overrides], name))


# -- config -----------------------------------------------------------------------------------


def one_row_batch() -> object:
    """`+exp=mmoe` (input batch normalization on) with data.batch_size = training rows - 1."""
    data = instantiate(cfg_for(["+exp=mmoe", *TINY], "c").data)
    data.prepare_data()
    data.setup("fit")
    rows = len(data.data["train"]["labels"]["click"])
    return train_with(f"data.batch_size={rows - 1}")()


def config_cases() -> None:
    for what, overrides in [
        ("a wrong type: `model.num_experts=abc`", ["model.num_experts=abc"]),
        ("a list where an int is expected: `model.num_experts=[2,3]`", ["model.num_experts=[2,3]"]),
        ("zero experts: `model.num_experts=0`", ["model.num_experts=0"]),
        ("a negative learning rate: `module.lr=-0.01`", ["module.lr=-0.01"]),
        ("dropout of 1: `model.dropout=1.0`", ["model.dropout=1.0"]),
        ("a zero-width layer: `model.expert_dims=[64,0]`", ["model.expert_dims=[64,0]"]),
        ("batch size 0: `data.batch_size=0`", ["data.batch_size=0"]),
        ("split fractions not summing to 1", ["data.split.fractions=[0.8,0.1,0.2]"]),
        ("an unknown split kind", ["data.split.kind=timestamp"]),
        ("a misspelled task kind", ["data.tasks=[{name: click, kind: binry}]"]),
        ("zero epochs: `trainer.max_epochs=0`", ["trainer.max_epochs=0"]),
        ("an unknown precision: `trainer.precision=33`", ["trainer.precision=33"]),
        ("a misspelled key added with `+`: `+model.num_expert=8`", ["+model.num_expert=8"]),
        ("a misspelled trainer key: `+trainer.max_epoch=3`", ["+trainer.max_epoch=3"]),
        ("a misspelled callback name", ["+callbacks.model_checkpiont.every_n_train_steps=3"]),
        ("a misspelled top-level key: `+seeed=3`", ["+seeed=3"]),
        ("a `_target_` that does not exist", ["model._target_=recolab.models.rank.mmoe.MMOE"]),
        ("an optimized metric for a task that does not exist", ["+optimized_metric=val/auc/clik"]),
        (
            "an unknown optimizer: `module.optimizer._target_=torch.optim.Adamm`",
            ["module.optimizer._target_=torch.optim.Adamm"],
        ),
        (
            "an optimizer name where its node belongs: `module.optimizer=adam`",
            ["module.optimizer=adam"],
        ),
        ("a misspelled optimizer option", ["+module.optimizer.fusd=true"]),
        ("a misspelled throughput-monitor option", ["+callbacks.throughput.window_sise=50"]),
        (
            "a misspelled DDP option",
            [
                "trainer=ddp",
                "trainer.strategy={_target_:pytorch_lightning.strategies.DDPStrategy,"
                "find_unused_parameter:true}",
            ],
        ),
    ]:
        case("config", what, train_with(*overrides))
    case(
        "config",
        "a batch size that leaves a training batch of one row, with batch normalization on",
        one_row_batch,
    )
    case(
        "config",
        "a required key left unset: `data=parquet` without `data.path`",
        lambda: train(cfg_for(["+exp=mmoe", "data=parquet"], "c")),
    )
    case(
        "config",
        "K larger than the corpus: `+exp=two_tower module.ks=[20,5000]`",
        lambda: train(cfg_for(["+exp=two_tower", *TINY, "module.ks=[20,5000]"], "c")),
    )
    case(
        "config",
        "a negative number of sampled negatives",
        lambda: train(
            cfg_for(["+exp=two_tower_mns", *TINY, "module.sampler.num_negatives=-1"], "c")
        ),
    )
    extra = TMP / "extra"
    (extra / "exp").mkdir(parents=True, exist_ok=True)
    (extra / "exp" / "typo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mmoe\nexp_name: typo\nmodel:\n  num_expert: 8\n"
    )
    case(
        "config",
        "a misspelled key inside an exp YAML file (`model: {num_expert: 8}`)",
        lambda: train(cfg_for(["+exp=typo", *TINY], "c", searchpath=extra)),
    )
    case(
        "config",
        "Hydra: overriding a key that does not exist: `model.num_expert=8`",
        lambda: cfg_for(["+exp=mmoe", "model.num_expert=8"], "c"),
    )
    case("config", "Hydra: an unknown experiment: `+exp=mmeo`", lambda: cfg_for(["+exp=mmeo"], "c"))


# -- data -------------------------------------------------------------------------------------


def run_config_cases() -> None:
    """What the config asks of the run: metrics it never logs, limits that train or test nothing."""
    for what, overrides in [
        (
            "a checkpoint monitoring a metric the run never logs",
            ["callbacks.model_checkpoint.monitor=val/auc/clik"],
        ),
        ("early stopping on a misspelled metric", ["callbacks.early_stopping.monitor=val/los"]),
        (
            "a monitored `val/recall_at_50` with 50 no longer in `module.ks`",
            ["+exp=two_tower", "module.ks=[20,100]"],
        ),
        ("a misspelled `optimized_metric`", ["+optimized_metric=val/aucc/click"]),
        ("a learning rate that makes the loss NaN: `module.lr=1e12`", ["module.lr=1e12"]),
        ("a negative seed: `seed=-1`", ["seed=-1"]),
        ("no training batch: `trainer.limit_train_batches=0`", ["trainer.limit_train_batches=0"]),
        ("no test batch: `trainer.limit_test_batches=0`", ["+trainer.limit_test_batches=0"]),
        (
            "no validation batch while a checkpoint monitors `val/loss`",
            ["trainer.limit_val_batches=0"],
        ),
        ("no step: `trainer.max_steps=0`", ["+trainer.max_steps=0"]),
        ("`trainer.accumulate_grad_batches=0`", ["+trainer.accumulate_grad_batches=0"]),
        ("`trainer.val_check_interval=1.5`", ["+trainer.val_check_interval=1.5"]),
        (
            "`trainer.val_check_interval` beyond the epoch's batches (Lightning's check, at fit start)",
            ["+trainer.val_check_interval=1000", "trainer.limit_train_batches=1.0"],
        ),
        (
            "validation every 5 epochs in a 1-epoch run that monitors `val/loss`",
            ["+trainer.check_val_every_n_epoch=5"],
        ),
        ("`trainer.min_epochs` above `trainer.max_epochs`", ["+trainer.min_epochs=5"]),
        ("a negative early-stopping patience", ["callbacks.early_stopping.patience=-1"]),
    ]:
        exp = [] if any(o.startswith("+exp=") for o in overrides) else ["+exp=mmoe"]
        case("run config", what, lambda o=[*exp, *TINY, *overrides]: train(cfg_for(o, "r")))


def log_table(n: int = 200, **overrides: object) -> dict:
    rng = np.random.default_rng(0)
    cols = {
        "user_id": rng.integers(1000, 1020, n),
        "item_id": rng.integers(0, 40, n),
        "hist": pa.array(
            [list(rng.integers(0, 40, rng.integers(0, 5))) for _ in range(n)], pa.list_(pa.int64())
        ),
        "position": rng.integers(1, 11, n).astype(np.int32),
        "duration": rng.exponential(30, n),
        "click": (rng.random(n) < 0.3).astype(float),
        "watch_time": rng.exponential(10, n),
        "timestamp": np.arange(n),
    }
    cols.update(overrides)
    return cols


def load(cols: dict, **kw: object) -> Callable[[], object]:
    def run() -> None:
        folder = TMP / "data_cases"
        folder.mkdir(exist_ok=True)
        path = folder / "log.parquet"
        pq.write_table(pa.table(cols), path)
        args = dict(
            path=str(path),
            sparse=["user_id", "item_id"],
            sequences={"hist": {"max_len": 4, "vocab_of": "item_id"}},
            tasks=[
                {"name": "click"},
                {"name": "watch_time", "kind": "regression", "transform": "log1p"},
            ],
            meta=["user_id", "position", "duration"],
            batch_size=16,
        )
        ParquetDataModule(**(args | kw)).setup()

    return run


def stream_folder(**second_file: object) -> Callable[[], object]:
    """A streamed folder whose training split's second file takes `second_file`'s columns."""

    def run() -> None:
        folder = TMP / "stream_cases"
        shutil.rmtree(folder, ignore_errors=True)
        for split in ("train", "val", "test"):
            (folder / split).mkdir(parents=True)
            pq.write_table(pa.table(log_table()), folder / split / "part-0.parquet")
        pq.write_table(pa.table(log_table(**second_file)), folder / "train" / "part-1.parquet")
        StreamingParquetDataModule(
            path=str(folder), sparse=["user_id", "item_id"], tasks=[{"name": "click"}]
        ).setup()

    return run


def with_rows(values: np.ndarray, rows: list[int], bad: object) -> np.ndarray:
    values = values.astype(np.float64).copy()
    values[rows] = bad
    return values


def data_cases() -> None:
    t = log_table()
    case(
        "data",
        "a column the config names is missing",
        load(log_table(), sparse=["user_id", "shop"]),
    )
    case("data", "float ids", load(log_table(item_id=np.arange(200) + 0.5)))
    case(
        "data",
        "a sequence column that holds numbers, not lists",
        load(log_table(hist=np.arange(200))),
    )
    case("data", "a label column of strings", load(log_table(click=np.array(["yes"] * 200))))
    case("data", "NaN labels", load(log_table(click=with_rows(t["click"], [3, 7], np.nan))))
    case("data", "infinite labels", load(log_table(click=with_rows(t["click"], [3], np.inf))))
    case("data", "a binary label of 2", load(log_table(click=with_rows(t["click"], [3], 2))))
    case(
        "data",
        "negative watch times (a log1p target)",
        load(log_table(watch_time=with_rows(t["watch_time"], [1, 2], -4.0))),
    )
    case(
        "data",
        "negative durations",
        load(log_table(duration=with_rows(t["duration"], [4, 50, 51], -1.0))),
    )
    case(
        "data", "missing durations", load(log_table(duration=with_rows(t["duration"], [4], np.nan)))
    )
    case("data", "positions below 1", load(log_table(position=with_rows(t["position"], [0, 9], 0))))
    case(
        "data",
        "a NaN timestamp (it would sort last, into the test split)",
        load(log_table(timestamp=with_rows(t["timestamp"], [5], np.nan))),
    )
    split = np.array(["train"] * 150 + ["val"] * 20 + ["test"] * 25 + ["valid"] * 5)
    case(
        "data",
        "a split column (`data.split.kind=column`) with a value that is no split",
        load(log_table(split=split), split={"kind": "column", "column": "split"}),
    )
    case(
        "data",
        "null ids",
        load(log_table(user_id=pa.array([None] + list(t["user_id"][1:]), pa.int64()))),
    )
    dup = log_table()
    for name, values in dup.items():
        dup[name] = (
            pa.array(values.to_pylist() + values.to_pylist()[:3], values.type)
            if isinstance(values, pa.Array)
            else np.concatenate([values, values[:3]])
        )
    case("data", "duplicate rows (an event log: same row, same timestamp)", load(dup))
    case(
        "data",
        "streaming: two files of a split hold a column in different kinds (int ids, string ids)",
        stream_folder(item_id=np.array([str(i) for i in t["item_id"]])),
    )
    case(
        "data",
        "an empty split",
        load(log_table(), split={"kind": "time", "fractions": [1.0, 0.0, 0.0]}),
    )
    case(
        "data",
        "every row bad, with drop_bad_rows=true",
        load(log_table(click=np.full(200, np.nan)), drop_bad_rows=True),
    )
    # values and files that pyarrow, torch or pandas would fail on, or silently change
    folder = TMP / "data_type_cases"

    def load_table(data: pa.Table) -> Callable[[], object]:
        """`load` for a table that a dict of columns cannot hold (a column named twice)."""

        def run() -> None:
            folder.mkdir(exist_ok=True)
            pq.write_table(data, folder / "log.parquet")
            ParquetDataModule(
                path=str(folder / "log.parquet"), sparse=["user_id"], tasks=[{"name": "click"}]
            ).setup()

        return run

    def spoiled(how: str, stream: bool = False) -> Callable[[], object]:
        def run() -> None:
            shutil.rmtree(folder, ignore_errors=True)
            for split in ("train", "val", "test"):
                (folder / split).mkdir(parents=True)
                pq.write_table(pa.table(log_table()), folder / split / "part-0.parquet")
            bad = folder / "train" / "part-1.parquet"
            data = bad.parent.joinpath("part-0.parquet").read_bytes()
            bad.write_bytes(b"" if how == "empty" else data[: len(data) // 2])
            if stream:
                StreamingParquetDataModule(
                    path=str(folder), sparse=["user_id", "item_id"], tasks=[{"name": "click"}]
                ).setup()
            else:
                ParquetDataModule(
                    path=str(bad), sparse=["user_id", "item_id"], tasks=[{"name": "click"}]
                ).setup()

        return run

    age = np.arange(200).astype(str).astype(object)
    age[37] = "abc"
    case(
        "data",
        "text in a dense column (`data.dense=[age]`)",
        load(log_table(age=age), dense=["age"]),
    )
    case(
        "data",
        "a column named twice",
        load_table(pa.table(log_table()).append_column("click", pa.array(np.zeros(200)))),
    )
    case("data", "a 0-byte parquet file", spoiled("empty"))
    case("data", "a parquet file cut short", spoiled("cut short"))
    case("data", "streaming: a 0-byte parquet file among a split's files", spoiled("empty", True))
    users = t["user_id"].astype(np.uint64)
    users[5] = np.uint64(2**63 + 7)
    case("data", "a uint64 id at or above 2**63", load(log_table(user_id=users)))
    case(
        "data",
        "a dense value float32 cannot hold (`1e300` would become `inf`)",
        load(log_table(age=with_rows(np.arange(200), [9], 1e300)), dense=["age"]),
    )
    case(
        "data",
        "a label float32 cannot hold",
        load(log_table(watch_time=with_rows(t["watch_time"], [9], 1e300))),
    )
    case(
        "data",
        "lists in a dense column",
        load(log_table(age=pa.array([[1.0]] * 200)), dense=["age"]),
    )
    case("data", "a boolean timestamp column", load(log_table(timestamp=np.ones(200, bool))))
    case(
        "data",
        "ISO date-time strings as timestamps",
        load(log_table(timestamp=np.array(["2024-05-01T12:00:00"] * 200))),
    )
    case(
        "data",
        "a null id inside a history list",
        load(log_table(hist=pa.array([[1, None]] + [[2]] * 199, pa.list_(pa.int64())))),
    )
    case(
        "data",
        "string item ids with a history of integer ids (`vocab_of: item_id`)",
        load(log_table(item_id=np.array([str(i) for i in t["item_id"]]))),
    )
    case(
        "data",
        "string user ids listed in `data.meta`",
        load(log_table(user_id=np.array([f"u{i}" for i in t["user_id"]]))),
    )
    ROWS.append(
        (
            "data",
            "dictionary-encoded columns (pandas `category`) and boolean labels",
            "not an error: read as the values they encode, and as 0 and 1",
        )
    )
    ROWS.append(
        (
            "data",
            "ids outside the vocabulary (new data on a checkpoint's vocabularies)",
            "not an error: mapped to the OOV bucket, counted per split and column, logged and tracked as "
            "`data/oov_rows/<split>/<column>`",
        )
    )
    ROWS.append(
        (
            "data",
            "any of the row problems above, with `data.drop_bad_rows=true`",
            "the rows are dropped, logged as a warning with each reason, and tracked as `data/dropped_rows`",
        )
    )


# -- import -----------------------------------------------------------------------------------


def import_cases() -> None:
    example = ROOT / "examples" / "import"
    folder = TMP / "import_cases"
    folder.mkdir(exist_ok=True)

    def broken(column: str, row: int, value: object) -> Callable[[], object]:
        frame = pd.read_csv(example / "log.csv")
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        frame.to_csv(folder / "log.csv", index=False)
        return lambda: import_log(folder / "log.csv", example / "schema.yaml", folder / "out")

    def schema(text: str) -> Callable[[], object]:
        (folder / "schema.yaml").write_text(text)
        return lambda: import_log(example / "log.csv", folder / "schema.yaml", folder / "out")

    for what, column, row, value in [
        ("a negative duration", "video_seconds", 4, -3.0),
        ("a position of 0", "slot", 0, 0),
        ("a binary label of 2", "clicked", 2, 2),
        ("a negative watch time", "watch_seconds", 7, -5.0),
        ("an empty user id", "uid", 3, None),
        ("a timestamp that is not a date", "ts", 5, "yesterday"),
        ("an empty dense value", "user_age", 11, None),
    ]:
        case("import", what, broken(column, row, value))
    case(
        "import",
        "a schema naming a column the file lacks",
        schema("user: uid\nitem: video\nlabels: [clicked]\nsplit: {kind: random}\n"),
    )
    case(
        "import",
        "a misspelled schema key",
        schema("user: uid\nitem: video_id\nlables: [clicked]\n"),
    )
    case(
        "import",
        "a misspelled label kind",
        schema(
            "user: uid\nitem: video_id\nlabels: [{column: clicked, kind: binry}]\nsplit: {kind: random}\n"
        ),
    )
    case(
        "import",
        "a time split without a timestamp column",
        schema("user: uid\nitem: video_id\nlabels: [clicked]\n"),
    )
    case("import", "a schema that is not valid YAML", schema("user: uid\nitem: [video_id\n"))
    case(
        "import",
        "a text column used as a label",
        schema("user: uid\nitem: video_id\nlabels: [category]\nsplit: {kind: random}\n"),
    )
    case(
        "import",
        "one column given two roles",
        schema(
            "user: uid\nitem: video_id\nlabels: [clicked]\nsparse: [uid]\nsplit: {kind: random}\n"
        ),
    )
    case(
        "import",
        "a log file that does not exist",
        lambda: import_log(folder / "nope.csv", example / "schema.yaml", folder / "out"),
    )

    def parquet_log(column: str, row: int, value: object, dtype: object) -> Callable[[], object]:
        frame = pd.read_csv(example / "log.csv")
        frame[column] = frame[column].astype(dtype)
        frame.loc[row, column] = value
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "log.parquet")
        return lambda: import_log(folder / "log.parquet", example / "schema.yaml", folder / "out")

    def text_log(text: bytes) -> Callable[[], object]:
        (folder / "log.csv").write_bytes(text)
        return lambda: import_log(folder / "log.csv", example / "schema.yaml", folder / "out")

    log_bytes = (example / "log.csv").read_bytes()
    for what, run in [
        ("text in a number column (`abc` in `user_age`)", lambda: broken("user_age", 150, "abc")()),
        ("a dense value float32 cannot hold (`1e300`)", lambda: broken("user_age", 10, 1e300)()),
        (
            "a header naming a column twice",
            lambda: text_log(log_bytes.replace(b"liked", b"clicked", 1))(),
        ),
        (
            "text that is not UTF-8 in an id column",
            lambda: text_log(log_bytes.replace(b",news,", b",n\xffws,", 1))(),
        ),
        (
            "a 0-byte parquet log",
            lambda: (
                (folder / "empty.parquet").write_bytes(b"")
                or import_log(folder / "empty.parquet", example / "schema.yaml", folder / "out")
            ),
        ),
        (
            "a uint64 id at or above 2**63 (parquet)",
            lambda: parquet_log("video_id", 3, np.uint64(2**63 + 1), np.uint64)(),
        ),
        ("a position beyond int32 (parquet)", lambda: parquet_log("slot", 3, 3e9, float)()),
    ]:
        case("import", what, run)
    ROWS.append(
        (
            "import",
            "dictionary-encoded columns (pandas `category`), numbers stored as text (parquet)",
            "not an error: read as the values they encode",
        )
    )

    from recolab.data import cli

    case(
        "import",
        "the command line: a misspelled argument `shema=`",
        lambda: cli.parse(["import", "path=x", "shema=y"]),
    )
    case("import", "the command line: an unknown command", lambda: cli.parse(["improt", "path=x"]))


# -- resume, tracking, checkpoints ------------------------------------------------------------


def streaming_resume_cases() -> None:
    """A streaming run's mid-epoch checkpoint without the stream's position (as recolab wrote
    before it saved one): refused, naming resume_inexact=true."""
    run = ["+exp=mmoe", "data=synthetic_video_streaming", *TINY, "logger=none"]
    run += [
        "+trainer.max_steps=1",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.early_stopping=null",
    ]
    train(cfg_for(run, "s1"))  # stops after step 1 of 2: its last.ckpt is mid-epoch
    last = TMP / "s1" / "out" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["loops"]["fit_loop"]["state_dict"].pop("combined_loader", None)
    torch.save(ckpt, last)
    case(
        "resume",
        "streaming: a mid-epoch checkpoint without the stream's position (an older recolab's)",
        lambda: train(cfg_for([*run, f"ckpt_path={last}"], "s2")),
    )


def device_cases() -> None:
    """`data.device_resident` (the training split in accelerator memory): a value it cannot take,
    and streamed data, which stays on the host."""
    case(
        "data",
        "`data.device_resident=gpu` (auto, true or false expected)",
        train_with("logger=none", "data.device_resident=gpu", name="d1"),
    )
    case(
        "data",
        "`data.device_resident=true` on streamed data",
        train_with(
            "logger=none",
            "data=synthetic_video_streaming",
            "data.device_resident=true",
            name="d2",
        ),
    )


def resume_and_tracking_cases() -> None:
    case(
        "resume",
        "`ckpt_path=last` with no checkpoint of the experiment",
        train_with("ckpt_path=last", name="r0"),
    )
    case(
        "resume",
        "`ckpt_path=` a file that does not exist",
        train_with("ckpt_path=/nonexistent/last.ckpt", name="r0"),
    )
    train(cfg_for(["+exp=mmoe", *TINY, "logger=none"], "r1"))
    last = TMP / "r1" / "out" / "checkpoints" / "last.ckpt"
    case(
        "resume",
        "resuming a checkpoint with other settings (`model.num_experts=8`)",
        train_with("logger=none", "model.num_experts=8", f"ckpt_path={last}", name="r2"),
    )
    source = TMP / "resumed_log.parquet"

    def clicks(n: int, users: int) -> None:
        rng = np.random.default_rng(0)
        pq.write_table(
            pa.table(
                {
                    "user_id": rng.integers(0, users, n),
                    "item_id": rng.integers(0, 50, n),
                    "click": (rng.random(n) < 0.3).astype(float),
                    "timestamp": np.arange(n),
                }
            ),
            source,
        )

    on_parquet = ["+exp=mmoe", "data=parquet", f"data.path={source}", "data.batch_size=64"]
    on_parquet += [*TINY[5:], "logger=none"]
    clicks(600, users=30)
    train(cfg_for(on_parquet, "r3"))
    clicks(700, users=40)  # the source changed since the run started
    case(
        "resume",
        "resuming a run whose data file has changed since (new users)",
        lambda: train(
            cfg_for(
                [*on_parquet, f"ckpt_path={TMP / 'r3' / 'out' / 'checkpoints' / 'last.ckpt'}"], "r4"
            )
        ),
    )

    def with_env(uri: str) -> Callable[[], object]:
        def run() -> None:
            os.environ["MLFLOW_TRACKING_URI"] = uri
            try:
                train(cfg_for(["+exp=mmoe", *TINY], "t"))
            finally:
                os.environ.pop("MLFLOW_TRACKING_URI", None)

        return run

    case(
        "tracking",
        "a tracking server that is down (`MLFLOW_TRACKING_URI=http://127.0.0.1:9`)",
        with_env("http://127.0.0.1:9"),
    )

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    case(
        "tracking",
        "an open port that is not MLflow (a web server answering 404)",
        with_env(f"http://127.0.0.1:{server.server_address[1]}"),
    )
    server.shutdown()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    case(
        "tracking",
        "a port that accepts connections and never answers (fails after 5 s)",
        with_env(f"http://127.0.0.1:{sock.getsockname()[1]}"),
    )
    sock.close()
    ROWS.append(
        (
            "tracking",
            "a run that raises during training (or is stopped with Ctrl-C)",
            "the exception, after the MLflow run is marked FAILED (never left RUNNING, never tagged `recolab.complete`)",
        )
    )
    ROWS.append(
        (
            "tracking",
            "a run killed with SIGKILL",
            "the MLflow run stays RUNNING without `recolab.complete` "
            "(no process is left to mark it); `ckpt_path=last` resumes it to the same result",
        )
    )

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.getpid, ())

    torch.save(
        {"state_dict": {}, "recolab": {"config": "{}"}, "payload": Payload()}, TMP / "evil.ckpt"
    )
    case(
        "checkpoint",
        "a checkpoint holding a pickled object (code that would run on load)",
        lambda: load_checkpoint(str(TMP / "evil.ckpt")),
    )
    (TMP / "junk.ckpt").write_bytes(b"not a checkpoint")
    case(
        "checkpoint",
        "a file that is not a checkpoint",
        lambda: load_checkpoint(str(TMP / "junk.ckpt")),
    )


def checkpoint_file_cases() -> None:
    """Broken checkpoint files, and `ckpt_path=last` where the run is finished (recolab.resume)."""
    sys.path.insert(0, str(ROOT))  # tests.integration.probe: a run that fails mid-training
    quick = ["+exp=mmoe", *TINY, "logger=none"]

    def in_runs(overrides: list[str], name: str) -> DictConfig:
        cfg = cfg_for(overrides, name)  # a run folder where `ckpt_path=last` looks
        with open_dict(cfg):
            cfg.paths.output_dir = str(TMP / name / "outputs" / "runs" / "mmoe" / "first")
        return cfg

    train(in_runs(quick, "k1"))  # finished: its report is written
    case(
        "resume",
        "`ckpt_path=last` when the newest run with these settings is finished",
        lambda: train(cfg_for([*quick, "ckpt_path=last"], "k1")),
    )
    failing = [o for o in quick if not o.startswith("trainer.max_epochs=")]
    failing += ["trainer.max_epochs=2", "+callbacks.probe._target_=tests.integration.probe.Probe"]
    failing += ["+callbacks.probe.raise_at_epoch=1"]
    try:
        train(in_runs(failing, "k2"))
    except RuntimeError:
        pass  # not finished: epoch 0's checkpoints are left
    folder = TMP / "k2" / "outputs" / "runs" / "mmoe" / "first" / "checkpoints"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:65_536])  # what a kill during a copy to it left
    case(
        "checkpoint",
        "`ckpt_path=` a truncated checkpoint (the first 64 kB)",
        lambda: train(cfg_for([*failing, f"ckpt_path={last}"], "k2")),
    )
    ROWS.append(
        (
            "resume",
            "`ckpt_path=last` whose `last.ckpt` is truncated or empty",
            "not an error: a warning names the broken file and the one used instead; the run "
            "resumes from its newest intact checkpoint",
        )
    )
    for path in folder.glob("epoch*.ckpt"):
        path.write_bytes(b"")
    case(
        "resume",
        "`ckpt_path=last` when every checkpoint of the run is broken",
        lambda: train(cfg_for([*failing, "ckpt_path=last"], "k2")),
    )
    ROWS.append(
        (
            "resume",
            "another run's empty or unreadable `last.ckpt` or `run.json` (a sweep job killed as it started)",
            "not an error: `ckpt_path=last` chooses by the runs' `run.json` files, skips an "
            "unreadable one (debug log), and opens no other run's checkpoint",
        )
    )
    (TMP / "empty.ckpt").write_bytes(b"")
    case(
        "checkpoint",
        "`ckpt_path=` an empty file",
        lambda: train(cfg_for([*quick, f"ckpt_path={TMP / 'empty.ckpt'}"], "k3")),
    )


def checkpoint_code_cases() -> None:
    """A checkpoint whose stored config would run code when `evaluate` rebuilds it (recolab.checkpoint_config)."""
    from omegaconf import OmegaConf

    from recolab.evaluate import evaluate

    train(cfg_for(["+exp=mmoe", *TINY, "logger=none"], "cc"))
    real = next((TMP / "cc" / "out" / "checkpoints").glob("epoch*.ckpt"))
    evil = TMP / "cc" / "site-packages" / "evil.pth"
    write_pth = {
        "_target_": "pathlib.Path.write_text",
        "_args_": [{"_target_": "pathlib.Path", "_args_": [str(evil)]}, "import os\n"],
    }

    def evaluated(edit: Callable[[dict], None], *overrides: str) -> Callable[[], object]:
        def run() -> object:
            state = torch.load(real, map_location="cpu", weights_only=True)
            config = OmegaConf.to_container(OmegaConf.create(state["recolab"]["config"]))
            edit(config)
            state["recolab"]["config"] = OmegaConf.to_yaml(OmegaConf.create(config))
            torch.save(state, TMP / "cc" / "crafted.ckpt")
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
                cfg = compose(
                    config_name="evaluate",
                    overrides=[
                        f"ckpt_path={TMP / 'cc' / 'crafted.ckpt'}",
                        "logger=none",
                        *overrides,
                    ],
                    return_hydra_config=True,
                )
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                cfg.paths.root_dir = str(TMP / "cc")
                cfg.paths.output_dir = str(TMP / "cc" / "eval")
                cfg.paths.data_dir = str(TMP / "data")
            try:
                return evaluate(cfg)
            finally:
                assert not evil.exists(), "a checkpoint's config wrote a file"

        return run

    evil.parent.mkdir(parents=True, exist_ok=True)
    for what, edit, overrides in [
        (
            "`evaluate` of a checkpoint whose stored `data._target_` is `pathlib.Path.write_text` "
            "(a `.pth` file in site-packages runs on the next Python start)",
            lambda c: c.update(data=write_pth),
            [],
        ),
        (
            "... whose stored `data._target_` is `builtins.open` (mode `w`)",
            lambda c: c.update(data={"_target_": "builtins.open", "file": str(evil), "mode": "w"}),
            [],
        ),
        (
            "... whose stored `model._target_` writes a file, evaluated on the user's own `data=`",
            lambda c: c.update(model=write_pth),
            ["data=synthetic_video", *TINY[:5]],
        ),
        (
            "... with a `_target_` nested in an allowed node (`model.num_experts`)",
            lambda c: c["model"].update(num_experts=write_pth),
            [],
        ),
        (
            "... with a `recolab.` path that leads out of recolab (`recolab.evaluate.Path.write_text`)",
            lambda c: c.update(data={**write_pth, "_target_": "recolab.evaluate.Path.write_text"}),
            [],
        ),
        (
            "... with `hydra.utils.get_method` of a path outside recolab (`module.heads.click`)",
            lambda c: c["module"].update(
                heads={"click": {"_target_": "hydra.utils.get_method", "path": "builtins.exec"}}
            ),
            [],
        ),
        (
            "... with an interpolation in its stored config (`${oc.create:...}` builds a node)",
            lambda c: c.update(model="${oc.create:'{_target_: builtins.open, file: x, mode: w}'}"),
            [],
        ),
    ]:
        case("checkpoint", what, evaluated(edit, *overrides))


def write(path: Path) -> None:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Bad inputs and the errors they give",
        "",
        "Written by `docs/make_bad_inputs.py`, which runs every case for real (do not edit by hand; run",
        "`.venv/bin/python docs/make_bad_inputs.py`). Config, data and tracking problems all fail before",
        "any training starts; `<tmp>` stands for the script's temporary folder.",
        "",
        "| area | bad input | what you get (first line) |",
        "| --- | --- | --- |",
        *(
            f"| {area} | {cell(what)} | `` {cell(message)} `` |"
            if not message.startswith("not an error") and not message.startswith("the ")
            else f"| {area} | {cell(what)} | {cell(message)} |"
            for area, what, message in ROWS
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def lifecycle_cases() -> None:
    """A run's folder and what tracking could not record (`recolab.lifecycle`)."""
    from recolab.run_logger import replay_unlogged

    held = TMP / "lifecycle" / "shared"  # a folder another run (another process) made its own
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from recolab.lifecycle import claim_run_dir as c; c({str(held)!r}, resuming=False)",
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )

    def into_held() -> object:
        cfg = cfg_for(["+exp=mmoe", *TINY], "lifecycle")
        with open_dict(cfg):
            cfg.paths.output_dir = str(held)
        return train(cfg)

    case("run folder", "`hydra.run.dir=` a folder that already holds another run", into_held)
    case(
        "tracking",
        "`python -m recolab sync <folder>` where nothing waits to be logged",
        lambda: replay_unlogged(held),
    )


def compare_cases() -> None:
    """`recolab compare`'s baseline selector and the per-user files it reads."""
    from recolab.reports.compare import RunRecord, comparison_records
    from recolab.reports.per_user import read_per_user

    runs = [
        RunRecord(
            f"r{i}", f"{exp}-seed1", {"seed": "1", "exp_name": exp, "k": k}, {"test/auc/x": 0.5}
        )
        for i, (exp, k) in enumerate([("mmoe", "4"), ("mmoe", "8"), ("shared_bottom", "0")])
    ]
    for what, selector in [
        ("a baseline no configuration matches: `baseline=mmeo`", "mmeo"),
        ("a baseline two configurations match: `baseline=mmoe`", "mmoe"),
    ]:
        case(
            "compare",
            what,
            lambda s=selector: comparison_records(runs, metric_patterns=["test/*"], baseline=s),
        )
    plain = TMP / "plain.parquet"
    pd.DataFrame({"user_id": [1, 2], "gauc/click": [0.5, 0.6]}).to_parquet(plain)
    case("compare", "a per-user file not written by recolab", lambda: read_per_user(plain))


def import_units_cases() -> None:
    """Units on import: a unit the schema cannot name is an error naming the key and the units."""
    example = ROOT / "examples" / "import"
    folder = TMP / "import_units_cases"
    folder.mkdir(exist_ok=True)
    base = (example / "schema.yaml").read_text()
    for what, line in [
        ("a timestamp unit of `sec`", "timestamp_unit: sec"),
        ("a duration unit of `minutes`", "duration_unit: minutes"),
    ]:
        (folder / "schema.yaml").write_text(base + line + "\n")
        case(
            "import",
            what,
            lambda: import_log(example / "log.csv", folder / "schema.yaml", folder / "out"),
        )


def selection_cases() -> None:
    """Choices that would read the test epoch or keep the worst epoch, and `recolab select`'s
    requests that cannot choose on validation (against a real MLflow store of two runs)."""
    for what, overrides in [
        ("a sweep optimizing a test metric", ["+optimized_metric=test/auc/click"]),
        ("a sweep optimizing an oracle metric", ["+optimized_metric=oracle/auc/click"]),
        (
            "a checkpoint chosen on a test metric",
            ["callbacks.model_checkpoint.monitor=test/gauc/click"],
        ),
        (
            "a checkpoint on `val/gauc/click` with the default `mode: min`",
            ["callbacks.model_checkpoint.monitor=val/gauc/click"],
        ),
        (
            "early stopping on `val/logloss/click` with `mode: max`",
            [
                "callbacks.early_stopping.monitor=val/logloss/click",
                "callbacks.early_stopping.mode=max",
            ],
        ),
        (
            "an Optuna search minimizing `val/auc/click`",
            ["+hparams_search=mmoe_optuna", "hydra.sweeper.direction=minimize"],
        ),
    ]:
        case("selection", what, lambda o=["+exp=mmoe", *TINY, *overrides]: train(cfg_for(o, "s")))

    import json

    from mlflow.tracking import MlflowClient

    from recolab.select import select

    root = TMP / "select"
    root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.create_experiment("recolab", artifact_location=str(root / "mlartifacts"))
    for experts in (4, 8):
        run = client.create_run(
            experiment,
            tags={
                "recolab.kind": "train",
                "recolab.complete": "true",
                "recolab.sweep": "sweep-1",
                "recolab.overrides": json.dumps(["+exp=mmoe", f"model.num_experts={experts}"]),
            },
        )
        for key, value in {"exp_name": "mmoe", "seed": 1, "model.num_experts": experts}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "val/auc/click", 0.7)
        client.set_terminated(run.info.run_id, "FINISHED")

    def select_with(*overrides: str) -> Callable[[], object]:
        def run() -> object:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
                cfg = compose(
                    config_name="select",
                    overrides=["sweep=sweep-1", "rerun=false", *overrides],
                    return_hydra_config=True,
                )
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                cfg.paths.root_dir = str(root)
                cfg.out_dir = str(root / "out")
            return select(cfg)

        return run

    for what, overrides in [
        ("`recolab select` on a test metric", ["metric=test/auc/click"]),
        ("`recolab select` on a training metric", ["metric=train/loss"]),
        ("`recolab select` on a metric no candidate logged", ["metric=val/auc/clik"]),
        (
            "`recolab select` re-running on a seed the sweep used",
            ["metric=val/auc/click", "seeds=[1,2]"],
        ),
        ("`recolab select` with no candidates named", ["metric=val/auc/click", "sweep=null"]),
        ("`recolab select` without a metric", []),
    ]:
        case("selection", what, select_with(*overrides))


def logged_model_cases() -> None:
    """The run's MLflow Model and its checkpoints in MLflow (`recolab.serving`, `evaluate run_id=`,
    `ckpt_path=<run id>`), against a real store of one tiny run."""
    import mlflow
    from omegaconf import OmegaConf

    from recolab.evaluate import evaluate
    from recolab.serving import load

    for what, overrides in [
        ("`register_as=` with `log_model=false`", ["register_as=tiny", "log_model=false"]),
        ("`register_as=` a name MLflow refuses (`a/b`)", ["register_as=a/b"]),
        ("`register_as=` without tracking (`logger=none`)", ["register_as=tiny", "logger=none"]),
        ("`log_model=` not a boolean", ["log_model=maybe"]),
    ]:
        case("logged model", what, train_with(*overrides, name="lm"))

    root = TMP / "lm_store"
    cfg = cfg_for(["+exp=mmoe", *TINY, "log_checkpoints=false"], "lm_store")
    train(cfg)
    store = f"sqlite:///{root}/mlflow.db"
    run = mlflow.MlflowClient(store).search_runs(
        [mlflow.MlflowClient(store).get_experiment_by_name("recolab").experiment_id]
    )[0]
    run_id = run.info.run_id

    def hidden(run: Callable[[], object]) -> Callable[[], object]:
        """`run`, its error naming `<run id>` instead of this store's random one."""

        def go() -> object:
            try:
                return run()
            except Exception as e:  # noqa: BLE001 (re-raised as the same type)
                raise type(e)(str(e).replace(run_id, "<run id>")) from None

        return go

    def evaluated(*overrides: str) -> Callable[[], object]:
        def go() -> object:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
                c = compose(
                    config_name="evaluate", overrides=list(overrides), return_hydra_config=True
                )
            HydraConfig.instance().set_config(c)
            with open_dict(c):
                c.paths.root_dir = str(root)
                c.paths.output_dir = str(root / "eval")
                c.paths.data_dir = str(TMP / "data")
            os.environ["MLFLOW_TRACKING_URI"] = store
            try:
                return evaluate(c)
            finally:
                os.environ.pop("MLFLOW_TRACKING_URI", None)

        return go

    case("logged model", "`evaluate` with neither `ckpt_path=` nor `run_id=`", evaluated())
    case(
        "logged model",
        "`evaluate` with both `ckpt_path=` and `run_id=`",
        hidden(evaluated("ckpt_path=a.ckpt", f"run_id={run_id}")),
    )
    case(
        "logged model",
        "`evaluate run_id=` a run the store does not hold",
        evaluated("run_id=0123456789abcdef0123456789abcdef"),
    )
    case(
        "logged model",
        "`evaluate run_id=` a run trained with `log_checkpoints=false`",
        hidden(evaluated(f"run_id={run_id}")),
    )

    def resumed() -> object:
        os.environ["MLFLOW_TRACKING_URI"] = store
        try:
            return train(cfg_for(["+exp=mmoe", *TINY, f"ckpt_path={run_id}"], "lm_resume"))
        finally:
            os.environ.pop("MLFLOW_TRACKING_URI", None)

    case("logged model", "`ckpt_path=<run id>` of a finished run", hidden(resumed))

    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    rows = model.input_example
    downloaded = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    direct = load(downloaded / "data" / "recolab_model")
    for what, bad in [
        ("rows without a feature column (`user_activity`)", rows.drop(columns=["user_activity"])),
        (
            "string ids where the log held integers",
            rows.assign(user_id=rows["user_id"].astype(str)),
        ),
        ("a null id", rows.assign(category=[None, *rows["category"][1:]])),
        ("a NaN dense value", rows.assign(log_duration=[float("nan"), *rows["log_duration"][1:]])),
    ]:
        case(
            "logged model", f"`recolab.serving` predicting {what}", lambda b=bad: direct.predict(b)
        )
    mlflow.set_tracking_uri(None)

    folder = TMP / "lm_folder"
    shutil.copytree(downloaded / "data" / "recolab_model", folder)
    config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    config["model"] = {"_target_": "builtins.open", "file": str(folder / "written")}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    case(
        "logged model",
        "loading a model whose `config.yaml` names `builtins.open` as the model",
        lambda: load(folder),
    )


def main() -> None:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    torch.set_num_threads(1)
    try:
        config_cases()
        run_config_cases()
        data_cases()
        import_cases()
        import_units_cases()
        resume_and_tracking_cases()
        streaming_resume_cases()
        device_cases()
        checkpoint_file_cases()
        checkpoint_code_cases()
        lifecycle_cases()
        compare_cases()
        selection_cases()
        logged_model_cases()
        write(ROOT / "docs" / "bad_inputs.md")
        print(f"wrote docs/bad_inputs.md ({len(ROWS)} cases)")
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
