"""Resume and determinism: a real process killed mid-epoch resumes with `ckpt_path=last` to the same
result as a run that was never interrupted; two runs with one seed agree exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from recolab.resume import ResumeError
from recolab.train import train
from tests.conftest import ROOT, TINY_WORLD, compose_train
from tests.integration.probe import LOG, ONE_THREAD_ENV, PAUSE_AFTER, one_torch_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 4,800 training rows / 256 = 19 batches an epoch; a checkpoint every 5 steps; dropout on, so the
# random state matters too. The probe records each training batch's digest and loss.
RUN = [
    "+exp=mmoe",
    *TINY_WORLD,
    "trainer.max_epochs=2",
    "model.dropout=0.1",
    "+callbacks.model_checkpoint.every_n_train_steps=5",
    "callbacks.progress_bar.refresh_rate=0",
    "+callbacks.probe._target_=tests.integration.probe.Probe",
]
STEPS_PER_EPOCH = 19
# Lightning defers step checkpoints until the monitored val/loss exists (after epoch 0's validation),
# so the run is killed in epoch 1: checkpoints at steps 20 and 25, killed after step 27.
CKPT_STEP, KILL_STEP = 25, 27


def read_log(path: Path) -> list[tuple[int, str, float]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(step), digest, float(loss)) for step, digest, loss in rows]


def start_killable_run(root: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "RECOLAB_CONFIG_DIR": str(ROOT / "configs"),
        "PYTHONPATH": str(ROOT),
        LOG: str(log),
        PAUSE_AFTER: str(KILL_STEP),
        **ONE_THREAD_ENV,
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "recolab", "train", *RUN],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_killed_mid_epoch_resumes_to_the_same_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, ref_root = tmp_path / "run", tmp_path / "reference"
    root.mkdir()
    ref_root.mkdir()
    killed_log, resumed_log, ref_log = (
        tmp_path / "killed.log",
        tmp_path / "resumed.log",
        tmp_path / "ref.log",
    )

    proc = start_killable_run(root, killed_log)
    try:
        deadline = time.monotonic() + 240
        while not Path(f"{killed_log}.paused").exists():
            assert proc.poll() is None, (
                f"the run ended before it was killed:\n{proc.stderr.read()[-3000:]}"
            )
            assert time.monotonic() < deadline, "the run never reached the step where it is killed"
            time.sleep(0.2)
    finally:
        os.killpg(
            proc.pid, signal.SIGKILL
        )  # a real SIGKILL: no handler runs, nothing is cleaned up
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    [last] = list((root / "outputs" / "runs" / "mmoe").glob("*/checkpoints/last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == CKPT_STEP and CKPT_STEP % STEPS_PER_EPOCH != 0  # mid-epoch
    run_id = ckpt["recolab"]["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    assert client.get_run(run_id).info.status == "RUNNING"  # a SIGKILLed process cannot mark itself
    assert "recolab.complete" not in client.get_run(run_id).data.tags

    monkeypatch.setenv(LOG, str(resumed_log))
    resumed = train(compose_train(root, [*RUN, "ckpt_path=last"]))
    monkeypatch.setenv(LOG, str(ref_log))
    monkeypatch.delenv(
        "MLFLOW_TRACKING_URI", raising=False
    )  # mlflow.set_tracking_uri set it for the last run
    reference = train(compose_train(ref_root, RUN))

    # The resumed run trained on exactly the batches the uninterrupted one did from step 26 on,
    # with the same losses (weights, optimizer and dropout's random state restored), ...
    killed, after, ref = read_log(killed_log), read_log(resumed_log), read_log(ref_log)
    assert [s for s, _, _ in killed] == list(range(1, KILL_STEP + 1))
    assert killed[:CKPT_STEP] + after == ref
    assert len(ref) == 2 * STEPS_PER_EPOCH
    # ... and ends with the same test metrics, bit for bit.
    assert resumed == reference

    # The same MLflow run went on (no second run), and is complete now.
    runs = client.search_runs([client.get_experiment_by_name("recolab").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["recolab.complete"] == "true"
    assert run.data.tags["recolab.resumed_from"] == str(last)
    assert run.data.metrics["test/auc/click"] == pytest.approx(resumed["test/auc/click"], abs=1e-6)
    # Its checkpoints and report went on in the killed run's folder.
    assert (last.parent.parent / "report" / "report.md").exists()


def test_ckpt_path_last_without_a_checkpoint_fails_before_reading_data(tmp_path: Path) -> None:
    with pytest.raises(
        ResumeError, match=r"ckpt_path=last: no checkpoint of experiment 'mmoe' with seed=0"
    ):
        train(compose_train(tmp_path, ["+exp=mmoe", *TINY_WORLD, "ckpt_path=last"]))
    assert not (tmp_path / "data").exists()


def test_resuming_with_other_settings_names_them(tmp_path: Path, data_cache: Path) -> None:
    quick = [
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "logger=none",
    ]
    train(
        compose_train(
            tmp_path, ["+exp=mmoe", *TINY_WORLD, *quick], data_dir=data_cache, out="first"
        )
    )
    [last] = list(tmp_path.glob("first/checkpoints/last.ckpt"))
    with pytest.raises(ResumeError, match=r"other settings \(model\.num_experts: 4 -> 8\)"):
        train(
            compose_train(
                tmp_path,
                ["+exp=mmoe", *TINY_WORLD, *quick, "model.num_experts=8", f"ckpt_path={last}"],
                data_dir=data_cache,
                out="second",
            )
        )


def test_two_runs_with_one_seed_agree_exactly(tmp_path: Path, data_cache: Path) -> None:
    quick = [
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
        "model.dropout=0.1",
        "logger=none",
        "seed=7",
    ]
    a = train(
        compose_train(tmp_path, ["+exp=mmoe", *TINY_WORLD, *quick], data_dir=data_cache, out="a")
    )
    b = train(
        compose_train(tmp_path, ["+exp=mmoe", *TINY_WORLD, *quick], data_dir=data_cache, out="b")
    )
    c = train(
        compose_train(
            tmp_path,
            ["+exp=mmoe", *TINY_WORLD, *quick[:-1], "seed=8"],
            data_dir=data_cache,
            out="c",
        )
    )
    assert a and a == b  # every metric, exactly
    assert a != c  # and the seed matters (the test could not pass by ignoring it)


def test_resuming_on_changed_data_fails_before_training(tmp_path: Path) -> None:
    # The source file gets rows with new users after the run started: same settings, other data.
    def log(n: int, users: int) -> None:
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
            tmp_path / "log.parquet",
        )

    run = [
        "+exp=mmoe",
        "data=parquet",
        f"data.path={tmp_path / 'log.parquet'}",
        "data.batch_size=64",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "logger=none",
    ]
    log(600, users=30)
    train(compose_train(tmp_path, run, out="first"))
    [last] = list(tmp_path.glob("first/checkpoints/last.ckpt"))
    log(700, users=40)
    written = last.stat().st_mtime_ns
    with pytest.raises(
        ResumeError, match=r"the data is not what the run trained on: vocabs\.user_id was 30 values"
    ):
        train(compose_train(tmp_path, [*run, f"ckpt_path={last}"], out="second"))
    assert last.stat().st_mtime_ns == written  # no step was taken, no checkpoint written


# A run of 3 epochs whose best checkpoint is epoch 0: `mode=max` on the validation loss, which
# falls epoch after epoch, makes every later epoch score worse (no top-k file after epoch 0).
WORSE_LATER = [
    "+exp=mmoe",
    *TINY_WORLD,
    "trainer.max_epochs=3",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "callbacks.model_checkpoint.mode=max",
    "callbacks.progress_bar.refresh_rate=0",
    "logger=none",
]


@pytest.fixture
def worse_later(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """WORSE_LATER's overrides, with the check that refuses a `mode` keeping the worst epoch of
    a metric (`recolab.run_checks`) turned off: here that mode is the point of the case."""
    import recolab.run_checks

    monkeypatch.setattr(recolab.run_checks, "_mode_problem", lambda *args: None)
    return WORSE_LATER


def _epoch_and_step(path: Path) -> tuple[int, int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["epoch"], ckpt["global_step"]


_WRITTEN: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    # builtin open (mode) and os.open (flags, as tempfile.mkstemp and fsspec use): writes only
    if _WRITTEN is None or event != "open" or not isinstance(args[0], (str, os.PathLike)):
        return
    mode, flags = args[1], args[2]
    if (mode and set(mode) & set("wax+")) or (
        mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    ):
        _WRITTEN.append(os.fspath(args[0]))


sys.addaudithook(_audit)  # once per process (a hook cannot be removed); records only when asked


def test_last_ckpt_is_the_last_epoch_written_in_its_folder_and_a_finished_run_is_not_resumed(
    tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch, worse_later: list[str]
) -> None:
    global _WRITTEN
    tmpdir = tmp_path / "tmpdir"  # TMPDIR: checkpoints must not pass through it
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    cfg = compose_train(tmp_path, WORSE_LATER, data_dir=data_cache, out="outputs/runs/mmoe/first")
    _WRITTEN = []
    try:
        train(cfg)
        written, _WRITTEN = _WRITTEN, None
    finally:
        _WRITTEN = None
    folder = tmp_path / "outputs" / "runs" / "mmoe" / "first" / "checkpoints"
    [best] = folder.glob("epoch*.ckpt")
    assert _epoch_and_step(best) == (0, 3)  # the case: later epochs wrote no top-k file
    assert _epoch_and_step(folder / "last.ckpt") == (2, 9)  # the last epoch, not the best
    # Written beside their name and renamed into place: nothing in TMPDIR, nothing left over.
    assert not [p for p in written if Path(p).is_relative_to(tmpdir)], written
    assert not list(tmpdir.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["epoch00.ckpt", "last.ckpt"]
    assert any(Path(p).parent == folder and p.endswith(".partial") for p in written)

    # The run is finished (its report is written): `ckpt_path=last` points to evaluate instead.
    with pytest.raises(
        ResumeError,
        match=rf"is finished .*`python -m recolab evaluate ckpt_path={re.escape(str(best))}`",
    ):
        train(compose_train(tmp_path, [*WORSE_LATER, "ckpt_path=last"], data_dir=data_cache))


def test_a_truncated_last_ckpt_resumes_from_the_runs_newest_intact_checkpoint(
    tmp_path: Path, data_cache: Path, caplog: pytest.LogCaptureFixture, worse_later: list[str]
) -> None:
    # The run fails as epoch 2 starts: not finished, its last.ckpt is epoch 1's.
    run = [*WORSE_LATER, "+callbacks.probe._target_=tests.integration.probe.Probe"]
    run += ["+callbacks.probe.raise_at_epoch=2"]
    first = compose_train(tmp_path, run, data_dir=data_cache, out="outputs/runs/mmoe/first")
    with pytest.raises(RuntimeError, match="failing on purpose at epoch 2"):
        train(first)
    folder = tmp_path / "outputs" / "runs" / "mmoe" / "first" / "checkpoints"
    best, last = folder / "epoch00.ckpt", folder / "last.ckpt"
    assert _epoch_and_step(last) == (1, 6)
    last.write_bytes(last.read_bytes()[:65_536])  # what a kill during a copy left
    # Another experiment's sweep job, killed as it started: empty files, never a reason to fail.
    job = tmp_path / "outputs" / "multiruns" / "2026-01-01_00-00-00" / "0-shared_bottom-seed0"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    (job / "run.json").write_bytes(b"")

    # Resumed from epoch 0 (a warning names the broken file), the run trains epoch 1 again and
    # writes a whole last.ckpt in place of the broken one.
    with caplog.at_level("WARNING", logger="recolab.resume"):
        with pytest.raises(RuntimeError, match="failing on purpose at epoch 2"):
            train(compose_train(tmp_path, [*run, "ckpt_path=last"], data_dir=data_cache))
    assert (
        f"ckpt_path={last}: not a checkpoint file (truncated, or not written by torch.save: "
        "[Errno 22] Invalid argument); "
        f"resuming from {best}, the run's newest intact checkpoint"
    ) in caplog.text
    assert _epoch_and_step(last) == (1, 6)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch00.ckpt", "last.ckpt"]


def test_a_checkpoint_of_an_older_recolab_resumes_under_todays_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run trained before the rankers' embedding became a node (`model.embedding.*`), the
    optimizer a node and the metric sets config (`tests/fixtures/checkpoints`, commit de8d598)
    resumes with today's spelling of its settings: its stored config is translated
    (`recolab.checkpoint_config.UPGRADES`) before resume compares it with the run's."""
    import logging

    caplog.set_level(logging.INFO, logger="recolab")
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes((ROOT / "tests/fixtures/checkpoints/mmoe_de8d598.ckpt").read_bytes())
    settings = [
        "+exp=mmoe",
        "data.num_users=50",
        "data.num_items=40",
        "data.num_impressions=2000",
        "data.batch_size=256",
        "model.embedding.embedding_dim=4",
        "model.num_experts=2",
        "model.expert_dims=[8]",
        "model.tower_dims=[4]",
        "trainer.max_epochs=1",
        "logger=none",
        f"ckpt_path={ckpt}",
    ]
    # a setting that does differ is still named, before any data is read
    with pytest.raises(ResumeError, match=r"model.num_experts: 2 -> 3"):
        train(compose_train(tmp_path, [*settings, "model.num_experts=3"], out="differs"))
    metrics = train(compose_train(tmp_path, settings, out="resumed"))
    assert "settings of an older recolab" in caplog.text
    assert f"resuming from {ckpt}" in caplog.text
    assert 0.0 <= metrics["test/auc/click"] <= 1.0
