"""RankModule with heads, the calibration stage and the truth metrics, on the real configs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recolab import calibration as C
from recolab.data.datamodule import ParquetDataModule
from recolab.data.schema import Schema
from recolab.evaluate import evaluate
from recolab.heads.duration import D2Q
from recolab.heads.position import PAL
from recolab.pipelines.rank import CalibrationStage, RankModule
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train
from tests.unit.models.rank.helpers import SCHEMA

QUICK = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "logger=none"]


class Echo(torch.nn.Module):
    """A 'ranker' whose outputs are fixed numbers, to check how the module treats them."""

    def __init__(self, outputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, features):
        return {k: v + self.w for k, v in self.outputs.items()}


def schema_with(meta: tuple[str, ...]) -> Schema:
    return Schema(
        sparse=SCHEMA.sparse,
        dense=SCHEMA.dense,
        sequences=SCHEMA.sequences,
        tasks=SCHEMA.tasks,
        meta=meta,
    )


def test_heads_replace_their_tasks_loss_and_others_keep_theirs() -> None:
    torch.manual_seed(0)
    schema = schema_with(("position", "duration", "user_id"))
    out = {"click": torch.randn(4), "like": torch.randn(4), "watch_time": torch.rand(4)}
    pal = PAL(num_positions=3)
    module = RankModule(Echo(out), schema, heads={"click": pal})
    labels = {
        "click": torch.tensor([1.0, 0, 0, 1]),
        "like": torch.tensor([0.0, 1, 0, 0]),
        "watch_time": torch.tensor([3.0, 0, 1, 9]),
    }
    meta = {"position": torch.tensor([1, 2, 3, 1]), "duration": torch.ones(4)}
    total, per_task = module._loss(out, labels, meta)
    torch.testing.assert_close(per_task["click"], pal.loss(out["click"], labels["click"], meta))
    torch.testing.assert_close(
        per_task["like"],
        torch.nn.functional.binary_cross_entropy_with_logits(out["like"], labels["like"]),
    )
    torch.testing.assert_close(
        per_task["watch_time"],
        torch.nn.functional.mse_loss(out["watch_time"], torch.log1p(labels["watch_time"])),
    )
    torch.testing.assert_close(total, sum(per_task.values()))
    assert module.heads["click"] is pal and any(
        p is pal.tower.position.weight for p in module.parameters()
    )


def test_bad_head_and_truth_settings_fail_with_the_key() -> None:
    schema = schema_with(("position", "user_id"))
    with pytest.raises(ValueError, match=r"module.heads: no task\(s\) \['ctr'\]"):
        RankModule(Echo({}), schema, heads={"ctr": PAL(num_positions=3)})
    with pytest.raises(
        ValueError, match=r"module.heads.watch_time \(D2Q\): needs meta column\(s\) \['duration'\]"
    ):
        RankModule(Echo({}), schema, heads={"watch_time": D2Q()})
    with pytest.raises(ValueError, match="heads.click=.*: expected an instance of Head"):
        RankModule(Echo({}), schema, heads={"click": torch.nn.Linear(1, 1)})
    with pytest.raises(
        ValueError, match=r"module.truth.click: column 'gt_relevance' is not in data.meta"
    ):
        RankModule(Echo({}), schema, truth={"click": "gt_relevance"})
    with pytest.raises(
        ValueError, match="negative_downsampling: 'watch_time' is not a binary task"
    ):
        RankModule(Echo({}), schema, negative_downsampling={"watch_time": 0.5})


def test_calibration_stage_corrects_then_calibrates_and_saves_as_plain_tensors() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(2000)
    y = (rng.random(2000) < p**2).astype(np.float64)
    stage = CalibrationStage(C.IsotonicCalibrator, {"click": 0.5}, ["click", "like"])
    stage.fit({"click": p, "like": p}, {"click": y, "like": y})
    corrected = C.downsampling_correction(p, 0.5)
    np.testing.assert_allclose(
        stage("click", p), C.IsotonicCalibrator().fit(corrected, y)(corrected)
    )
    np.testing.assert_allclose(
        stage("like", p), C.IsotonicCalibrator().fit(p, y)(p)
    )  # no rate for like
    buf = io.BytesIO()
    torch.save({"s": stage.get_extra_state()}, buf)
    buf.seek(0)
    again = CalibrationStage(None, {}, ["click", "like"])
    again.set_extra_state(torch.load(buf, weights_only=True)["s"])
    assert again.rates == {"click": 0.5}
    np.testing.assert_array_equal(again("click", p), stage("click", p))


def _downsampling_table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 4000
    cols = {
        "user_id": rng.integers(1, 50, n),
        "item_id": rng.integers(1, 30, n),
        "click": (rng.random(n) < 0.1).astype(float),
        "timestamp": np.arange(n),
    }
    pq.write_table(pa.table(cols), tmp_path / "log.parquet")
    return tmp_path / "log.parquet"


def test_negative_downsampling_keeps_positives_and_a_share_of_negatives(tmp_path: Path) -> None:
    path = _downsampling_table(tmp_path)
    full = ParquetDataModule(
        path=str(path), sparse=["user_id", "item_id"], tasks=[{"name": "click"}], meta=["user_id"]
    )
    full.setup()
    dm = ParquetDataModule(
        path=str(path),
        sparse=["user_id", "item_id"],
        tasks=[{"name": "click"}],
        meta=["user_id"],
        negative_downsampling={"task": "click", "rate": 0.25},
    )
    dm.setup()
    y_full, y = full.data["train"]["labels"]["click"], dm.data["train"]["labels"]["click"]
    assert int(y.sum()) == int(y_full.sum())  # every positive kept
    kept = float((y == 0).sum() / (y_full == 0).sum())
    assert abs(kept - 0.25) < 0.03
    assert len(dm.data["test"]["labels"]["click"]) == len(
        full.data["test"]["labels"]["click"]
    )  # evaluation untouched
    assert dm.module_inputs()["negative_downsampling"] == {"click": 0.25}
    assert full.module_inputs()["negative_downsampling"] == {}
    with pytest.raises(ValueError, match=r"negative_downsampling.rate=0: expected a number > 0"):
        ParquetDataModule(
            path=str(path),
            sparse=["user_id"],
            tasks=[{"name": "click"}],
            negative_downsampling={"task": "click", "rate": 0},
        )
    with pytest.raises(
        ValueError, match="data.negative_downsampling.task: 'like' is not a binary task"
    ):
        ParquetDataModule(
            path=str(path),
            sparse=["user_id"],
            tasks=[{"name": "click"}],
            negative_downsampling={"task": "like", "rate": 0.5},
        )


def test_pal_d2q_isotonic_and_downsampling_end_to_end(tmp_path: Path, data_cache: Path) -> None:
    """Train through `train(cfg)`; the best checkpoint carries the heads' fit and the calibrator."""
    cfg = compose_train(
        tmp_path,
        [
            "+exp=mmoe_pal",
            "head=[pal,d2q]",
            "+calibration=isotonic",
            "++module.truth.watch_time=gt_interest",
            "++data.negative_downsampling={task: click, rate: 0.5}",
            *TINY_WORLD,
            *QUICK,
        ],
        data_dir=data_cache,
    )
    metrics = train(cfg)
    for key in ("ece", "ece_raw", "logloss_raw", "auc_raw", "truth_xauc", "truth_xgauc"):
        assert f"test/{key}/click" in metrics, key
    assert "test/truth_xauc/watch_time" in metrics and "test/ece_raw/like" in metrics
    ckpt_path = next((tmp_path / "out" / "checkpoints").glob("epoch*.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    assert int(state["heads.watch_time.groups_used"]) > 1  # D2Q was fitted on the training split
    extra = state["calibration._extra_state"]
    assert extra["rates"] == {"click": 0.5} and extra["calibrators"]["click"]["kind"] == "isotonic"
    # The calibrator the checkpoint holds and the report's file agree.
    saved = C.load_json(tmp_path / "out" / "report" / "calibration.json")["click"]
    grid = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(saved(grid), C.from_state(extra["calibrators"]["click"])(grid))
    report = json.loads((tmp_path / "out" / "report" / "metrics.json").read_text())
    assert "ece_raw" in report["calibration/click"] and report["calibration_stage"]["rates"] == {
        "click": 0.5
    }
    assert (
        report["heads"]["click"]["head"] == "pal"
        and len(report["position_effect"]["click"]["true"]) == 10
    )
    # `recolab evaluate` rebuilds the module from the checkpoint and applies the same stage.
    ev = compose_train(
        tmp_path,
        [f"ckpt_path={ckpt_path}", "logger=none"],
        config_name="evaluate",
        out="eval",
        data_dir=data_cache,
    )
    again = evaluate(ev)
    for key in (
        "test/ece/click",
        "test/logloss/click",
        "test/ece_raw/click",
        "test/mae/watch_time",
        "test/truth_xauc/click",
    ):
        assert again[key] == pytest.approx(metrics[key], rel=1e-5), key
