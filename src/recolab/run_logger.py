"""The MLflow logger of a recolab run, and what it keeps while the tracking server is gone.

`RunLogger` is Lightning's `MLFlowLogger` that leaves the run's status to `recolab.lifecycle`
(FINISHED once the report is logged, FAILED, KILLED), uploads the best and last checkpoints as
the run's artifacts as they are written, and, when the server stops answering, goes on without
it: what it could not send (metrics, then the report and the final status) goes to
`<run folder>/unlogged_tracking.jsonl` while training, checkpointing and testing go on, and the
run ends with `TrackingIncomplete` saying what is missing. `replay_unlogged` records it once the
server is back (`python -m recolab sync <run folder>`).

(`configs/logger/mlflow.yaml`, and the configs stored in runs and checkpoints, name the class
`recolab.lifecycle.RunLogger`, which `recolab.lifecycle` imports from here.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from mlflow.exceptions import MlflowException, RestException
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from recolab import resume, tracking

log = logging.getLogger(__name__)

UNLOGGED = "unlogged_tracking.jsonl"

#: What a tracking server that is gone (refused, timed out, reset, 5xx after retries) raises; a
#: `RestException` is an answer (a bad request, say), not a lost server.
UNREACHABLE = (MlflowException, requests.exceptions.RequestException, OSError)


class TrackingIncomplete(RuntimeError):
    """The run ended but MLflow could not record all of it (the server stopped answering)."""


class RunLogger(MLFlowLogger):
    """Lightning's `MLFlowLogger` for a recolab run (`configs/logger/mlflow.yaml`).

    It never ends the run (`finalize` runs at the end of each `fit` and `test`: the status is
    set by `recolab.lifecycle`'s `finish_run`, `fail_run` or `kill_run`), and when the server stops answering, metrics
    go to `unlogged_path` instead of stopping training (`lost` says why, `None` while it answers).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unlogged_path = Path(UNLOGGED)  # start_tracking: <run folder>/unlogged_tracking.jsonl
        self.lost: str | None = None
        self.unlogged_values = 0
        self.ended = False  # the run's end (status) is written to unlogged_path
        #: Upload the best and last checkpoints to the run's `checkpoints/` as they are written
        #: (`log_checkpoints` in configs/train.yaml; set by `start_tracking` for a training run).
        self.log_checkpoints = False
        self._uploaded: dict[str, tuple[str, int]] = {}  # artifact name -> (file, mtime) sent

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.lost is None:
            with unless_lost(self, f"step {step or 0}"):
                return super().log_metrics(metrics, step)
        values = {k: float(v) for k, v in metrics.items() if not isinstance(v, str)}
        self.keep({"step": step or 0, "timestamp": int(time.time() * 1000), "metrics": values})
        self.unlogged_values += len(values)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        if self.log_checkpoints and self.lost is None:
            self.upload_checkpoints(checkpoint_callback)

    def upload_checkpoints(self, callback: Any) -> None:
        """Send the run's best and last checkpoints as `checkpoints/best.ckpt` and
        `checkpoints/last.ckpt`, each again whenever its file changed (the best's own name goes
        to the tag `recolab.best_checkpoint`), so that `evaluate run_id=...` and a resume work
        from any machine that reaches the store (`recolab.resume`)."""
        files = {resume.LAST: callback.last_model_path, resume.BEST: callback.best_model_path}
        for name, path in files.items():
            if not path or not Path(path).is_file():
                continue
            sent = (str(path), Path(path).stat().st_mtime_ns)
            if self._uploaded.get(name) == sent:
                continue
            with unless_lost(self, f"uploading {Path(path).name}"):
                with _named(Path(path), name) as file:
                    self.experiment.log_artifact(self.run_id, str(file), resume.ARTIFACT_DIR)
                if name == resume.BEST:
                    self.experiment.set_tag(self.run_id, resume.BEST_TAG, Path(path).name)
                self._uploaded[name] = sent
            if self.lost is not None:
                return

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._initialized and self._checkpoint_callback and self.lost is None:
            self._scan_and_log_checkpoints(self._checkpoint_callback)  # log_model=true only

    def lose(self, error: BaseException, where: str) -> None:
        """Go on without the server: from now on, what would be sent is kept in `unlogged_path`."""
        text = str(error)
        cause = re.search(
            r"\[Errno -?\d+\] [^'\")]+|Read timed out|too many \d+ error responses", text
        )
        self.lost = f"at {where}: {cause[0] if cause else text.splitlines()[0][:200]}"
        log.warning(
            "MLflow at %s stopped answering %s; training goes on, and what is not logged is "
            "kept in %s",
            self._tracking_uri,
            self.lost,
            self.unlogged_path,
        )

    def keep(self, record: dict[str, Any]) -> None:
        """Append one record to `unlogged_path` (its first line says which run it belongs to)."""
        new = not self.unlogged_path.exists()
        with self.unlogged_path.open("a") as f:
            if new:
                header = {"run_id": self._run_id, "tracking_uri": self._tracking_uri}
                f.write(json.dumps(header) + "\n")
            f.write(json.dumps(record) + "\n")

    def end(
        self, status: str, artifacts: list[Path] = (), tags: dict[str, str] | None = None
    ) -> bool:
        """Log the artifacts and tags and set the run's status; if the server is (or goes) away,
        keep them in `unlogged_path` and return False."""
        if self.lost is None:
            with unless_lost(self, f"the run's end ({status})"):
                for p in artifacts:
                    self.experiment.log_artifact(self.run_id, str(p), artifact_path="report")
                for key, value in (tags or {}).items():
                    self.experiment.set_tag(self.run_id, key, value)
                self.experiment.set_terminated(self.run_id, status=status)
                return True
        if not self.ended:
            record = {"artifacts": [str(Path(p).resolve()) for p in artifacts], "tags": tags or {}}
            self.keep({"end": {**record, "status": status}})
            self.ended = True
        return False

    def incomplete(self, output_dir: Path) -> TrackingIncomplete:
        return TrackingIncomplete(
            f"MLflow at {self._tracking_uri} stopped answering {self.lost}; training went on. "
            f"Checkpoints and report: {output_dir}. Not recorded in MLflow run {self._run_id}: "
            f"{self.unlogged_values} metric values, the report and the run's status (kept in "
            f"{self.unlogged_path}). Once the server answers again, record them with: "
            f"python -m recolab sync {output_dir}"
        )


@contextlib.contextmanager
def _named(path: Path, name: str) -> Iterator[Path]:
    """`path` under the file name `name`: itself, or a hard link (a copy where links fail) in a
    hidden folder beside the run's checkpoint folder, removed afterwards."""
    if path.name == name:
        yield path
        return
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".upload-", dir=path.parent.parent) as tmp:
        target = Path(tmp) / name
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        yield target


@contextlib.contextmanager
def unless_lost(mlf: MLFlowLogger, where: str, *, confirm: bool = False) -> Iterator[None]:
    """Send what the block sends to MLflow; where the server is gone, a `RunLogger` goes on
    without it (`RunLogger.lose`) and the block's result is left out. An answer of the server (a
    `RestException`) raises, and so does anything from another logger. With `confirm`, a lost
    server is confirmed first (`recolab.tracking.check_reachable`): an error from a server that
    still answers raises."""
    try:
        yield
    except RestException:
        raise
    except UNREACHABLE as e:
        if not isinstance(mlf, RunLogger):
            raise
        if confirm:
            try:
                tracking.check_reachable(mlf._tracking_uri)
            except tracking.TrackingError:
                mlf.lose(e, where)
                return
            raise
        mlf.lose(e, where)


def is_lost(mlf: MLFlowLogger | None) -> bool:
    """No MLflow run to send to: untracked, or its server stopped answering."""
    return mlf is None or getattr(mlf, "lost", None) is not None


# ---------------------------------------------------------------------------------------------
# Recording what tracking missed


def replay_unlogged(folder: str | Path, tracking_uri: str | None = None) -> str:
    """Send a run folder's `unlogged_tracking.jsonl` to its MLflow run (metrics, then the report,
    tags and status); the file is renamed `*.synced` once all of it is recorded. Returns a summary."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    path = Path(folder) / UNLOGGED
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (nothing of that run is waiting to be logged)"
        )
    header, *records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or header["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    run_id = header["run_id"]
    client.get_run(run_id)  # fails at once, naming the run, where the server does not have it
    metrics = [
        Metric(key=k, value=v, timestamp=r["timestamp"], step=r["step"])
        for r in records
        if "metrics" in r
        for k, v in r["metrics"].items()
    ]
    for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    status = "RUNNING"
    for end in (r["end"] for r in records if "end" in r):
        for p in end["artifacts"]:
            client.log_artifact(run_id, p, artifact_path="report")
        for key, value in end["tags"].items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status=end["status"])
        status = end["status"]
    path.rename(path.with_name(path.name + ".synced"))
    return f"run {run_id} at {uri}: {len(metrics)} metric values logged, status {status}"
