"""Streaming resume: a run on `data=synthetic_video_streaming` stopped mid-epoch and resumed with
`ckpt_path=last` trains on exactly the batches (row for row) of a run that went through, and ends
with its test metrics bit for bit, though its loader worker reads ahead of training; a checkpoint
without the stream's position (an older recolab's) is refused unless `resume_inexact=true`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from recolab.resume import ResumeError
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train
from tests.integration.probe import one_torch_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Each training batch's rows, `request_id * 100 + position`, in the order training took them.
SEEN: list[list[int]] = []
#: Raise after this global step (a module variable, not a setting: the resumed run's must match).
STOP_AFTER: list[int] = []


class Record(pl.Callback):
    """Records each training batch's rows in `SEEN`; raises after global step `STOP_AFTER` (a run
    killed there: the checkpoints written until then are all that is left of it)."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        meta = batch["meta"]
        SEEN.append((meta["request_id"].long() * 100 + meta["position"].long()).tolist())

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if STOP_AFTER and trainer.global_step == STOP_AFTER[0]:
            raise RuntimeError(f"stopped on purpose after step {trainer.global_step}")


# 4,800 training rows in row groups of 500 (files of 2,000), a shuffle buffer of 1,000 rows, one
# loader worker (the default: it reads ahead of training); 19 batches of 256 an epoch, dropout on.
RUN = [
    "+exp=mmoe",
    "data=synthetic_video_streaming",
    *TINY_WORLD,
    "data.row_group_size=500",
    "data.rows_per_file=2000",
    "data.shuffle_buffer=1000",
    "data.num_workers=1",
    "trainer.max_epochs=2",
    "model.dropout=0.1",
    "+callbacks.model_checkpoint.every_n_train_steps=5",
    "callbacks.progress_bar.refresh_rate=0",
    "+callbacks.record._target_=tests.integration.test_streaming_resume.Record",
]
STEPS_PER_EPOCH = 19
# Step checkpoints wait for epoch 0's val/loss: checkpoints at steps 20 and 25, stopped after 27.
CKPT_STEP, STOP_STEP = 25, 27


def _run(
    root: Path, overrides: list[str], data_cache: Path, *, stop_after: int | None = None, **kw: Any
) -> dict[str, float]:
    SEEN.clear()
    STOP_AFTER[:] = [] if stop_after is None else [stop_after]
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri set it for the last run
    try:
        return train(compose_train(root, overrides, data_dir=data_cache, **kw))
    finally:
        STOP_AFTER.clear()


def test_a_stream_stopped_mid_epoch_resumes_to_the_same_batches_and_metrics(
    tmp_path: Path, data_cache: Path
) -> None:
    root, ref_root = tmp_path / "run", tmp_path / "reference"
    folder = "outputs/runs/mmoe/first"
    with pytest.raises(RuntimeError, match=f"stopped on purpose after step {STOP_STEP}"):
        _run(root, RUN, data_cache, stop_after=STOP_STEP, out=folder)
    stopped = list(SEEN)
    last = root / folder / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # plain data and tensors only
    assert ckpt["global_step"] == CKPT_STEP and CKPT_STEP % STEPS_PER_EPOCH != 0  # mid-epoch

    resumed = _run(root, [*RUN, "ckpt_path=last"], data_cache)
    after = list(SEEN)
    reference = _run(ref_root, RUN, data_cache)
    ref = list(SEEN)

    assert len(stopped) == STOP_STEP and len(ref) == 2 * STEPS_PER_EPOCH
    assert stopped[:CKPT_STEP] + after == ref  # the same rows, in the same batches and order
    assert resumed == reference  # every test metric, bit for bit
    # The loader's position (Lightning saves it with the loops): epoch 1, after 6 of its batches.
    [stream] = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert stream["epoch"] == 1 and stream["batches"] == CKPT_STEP - STEPS_PER_EPOCH

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("recolab").experiment_id])
    assert run.data.tags["recolab.resume_exact"] == "true"
    assert run.data.tags["recolab.complete"] == "true"


def test_a_checkpoint_without_the_streams_position_is_resumed_only_with_consent(
    tmp_path: Path, data_cache: Path
) -> None:
    # One epoch, a checkpoint every 5 steps from the first (no monitor to wait for), stopped after 7.
    run = [
        *RUN,
        "trainer.max_epochs=1",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.early_stopping=null",
    ]
    folder = "outputs/runs/mmoe/first"
    with pytest.raises(RuntimeError, match="stopped on purpose after step 7"):
        _run(tmp_path, run, data_cache, stop_after=7, out=folder)
    # What a recolab that did not save the stream's position wrote: the same, without it.
    last = tmp_path / folder / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5
    ckpt["loops"]["fit_loop"]["state_dict"].pop("combined_loader", None)
    torch.save(ckpt, last)
    written = last.stat().st_mtime_ns

    with pytest.raises(
        ResumeError,
        match=rf"ckpt_path: {last}: this streaming run cannot resume exactly: it was taken "
        r"mid-epoch and holds no position in the data stream .*Set resume_inexact=true to resume "
        r"anyway \(the MLflow run is tagged recolab.resume_exact=false\)",
    ):
        _run(tmp_path, [*run, "ckpt_path=last"], data_cache)
    assert last.stat().st_mtime_ns == written and not SEEN  # refused before any step

    metrics = _run(tmp_path, [*run, "ckpt_path=last", "resume_inexact=true"], data_cache)
    assert "test/auc/click" in metrics and len(SEEN) == STEPS_PER_EPOCH - 5
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    [mlrun] = client.search_runs([client.get_experiment_by_name("recolab").experiment_id])
    assert mlrun.data.tags["recolab.resume_exact"] == "false"
    assert mlrun.data.tags["recolab.complete"] == "true"
    assert mlrun.data.params["resume_inexact"] == "False"  # the run's settings, as it was started
