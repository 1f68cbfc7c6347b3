"""A run from start to end: its own folder, its MLflow run, and how each way of ending is recorded.

**Its own folder.** The default folder names carry the start time and an id unique to the
launching process (`${recolab_run_id:}` in `configs/hydra/default.yaml`), so runs or sweeps
started in the same second never share one. At start (before Hydra writes into it, through
`ClaimRunDir`, and again in `train`) rank zero creates `run.lock` in the folder exclusively and
holds an `flock` on it while the process lives: a second run given the same folder
(`hydra.run.dir=...` forced twice) fails with `RunDirError` naming it instead of overwriting the
first run's files. Resuming (`ckpt_path=...`) continues in its run's folder, which is allowed once
no live process holds that folder's lock.

**Its MLflow run** is FINISHED only once its report is written and logged (`finish_run`). A run
that raised is FAILED (`fail_run`); one stopped by SIGTERM (`kill`, `docker stop`, Kubernetes)
is KILLED and the process exits with status 143 (`kill_run`); a SIGKILL leaves it RUNNING.
Lightning's `MLFlowLogger` sets the run FINISHED at the end of every `fit` and `test`; `RunLogger`
leaves the status to the functions here.

**A tracking server that stops answering** costs seconds, not MLflow's ~12 minutes of retries:
the training process asks MLflow for few, short retries (`QUICK_REQUESTS`, where the user has
not set them), and `RunLogger` keeps what it could not send (metrics, then the report and the
final status) in `<run folder>/unlogged_tracking.jsonl` while training, checkpointing and
testing go on. The run then ends with `TrackingIncomplete` (a non-zero exit) saying what is
missing and the command that records it once the server is back:
`python -m recolab sync <run folder>` (`replay_unlogged`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import requests
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from mlflow.exceptions import MlflowException, RestException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from recolab import resume, tracking
from recolab.console import report_curves

log = logging.getLogger(__name__)

MARKER = "run.lock"
UNLOGGED = "unlogged_tracking.jsonl"

#: Unique to this process: the run folder's suffix (`${recolab_run_id:}`), so that two runs started
#: in the same second get two folders.
RUN_ID = secrets.token_hex(3)

#: MLflow's HTTP settings for a training process, where the user has not set them: a server that
#: is gone costs a few seconds per call (3 tries, 10 s timeout) instead of MLflow's defaults
#: (7 retries, backoff factor 2, 120 s timeout: ~12 minutes per call).
QUICK_REQUESTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

#: What a tracking server that is gone (refused, timed out, reset, 5xx after retries) raises; a
#: `RestException` is an answer (a bad request, say), not a lost server.
UNREACHABLE = (MlflowException, requests.exceptions.RequestException, OSError)


class RunDirError(RuntimeError):
    """The run's folder belongs to another run."""


class TrackingIncomplete(RuntimeError):
    """The run ended but MLflow could not record all of it (the server stopped answering)."""


# ---------------------------------------------------------------------------------------------
# The run's folder


_held: dict[Path, int] = {}  # folder -> descriptor of its flock'ed marker, held by this process


def claim_run_dir(folder: str | Path, *, resuming: bool) -> None:
    """Make `folder` this run's: create its marker exclusively and hold an flock on it.

    A marker this process created (a second `train()` in one process: tests, notebooks) or already
    holds is kept. Where another run's marker is there, a resumed run takes the folder over when no
    live process holds the lock; anything else raises `RunDirError` naming the folder.
    """
    folder = Path(folder).resolve()
    if folder in _held or rank_zero_only.rank != 0:  # other ranks share rank zero's folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        os.write(fd, (json.dumps(owner) + "\n").encode())
    except FileExistsError:
        fd = os.open(marker, os.O_RDWR)
        previous = _read_owner(marker)
        mine = previous.get("pid") == os.getpid() and previous.get("host") == owner["host"]
        if not (resuming or mine):
            os.close(fd)
            raise RunDirError(
                f"run folder {folder} already holds another run ({MARKER}: {_describe(previous)}): "
                "each run needs its own folder, or it overwrites the other's checkpoints, config "
                "and report. Leave hydra.run.dir (and hydra.sweep.dir) to their defaults, which are "
                "unique, or name a new folder; to continue that run, add ckpt_path=last (or the "
                "path of one of its checkpoints)."
            ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(
            f"run folder {folder} is in use by a running process ({MARKER}: "
            f"{_describe(_read_owner(marker))}): wait for it to end or stop it before resuming "
            "there, or give this run another folder"
        ) from None
    _held[folder] = fd


def release_run_dir(folder: str | Path) -> None:
    """Unlock the folder (its marker stays: the folder is still that run's)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)


def _read_owner(marker: Path) -> dict[str, Any]:
    try:
        return json.loads(marker.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "unreadable"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"process {owner.get('pid')} on {owner.get('host')}, started {started}"


class ClaimRunDir(Callback):
    """Hydra callback: claims a single run's folder before Hydra writes `.hydra/` and its log there."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # As run_job does next: the folder's path reads ${hydra:runtime.cwd}.
        HydraConfig.instance().set_config(config)
        # `ckpt_path` resumes a training run; evaluate's names the checkpoint it evaluates.
        resuming = config.hydra.job.name == "train" and bool(config.get("ckpt_path"))
        try:
            claim_run_dir(str(config.hydra.run.dir), resuming=resuming)
        except RunDirError as e:  # Hydra turns a callback's Exception into a warning and goes on
            raise SystemExit(f"{type(e).__name__}: {e}") from None


OmegaConf.register_new_resolver("recolab_run_id", lambda: RUN_ID, replace=True)


# ---------------------------------------------------------------------------------------------
# The MLflow run


class RunLogger(MLFlowLogger):
    """Lightning's `MLFlowLogger` for a recolab run (`configs/logger/mlflow.yaml`).

    It never ends the run (`finalize` runs at the end of each `fit` and `test`: the status is
    `finish_run`'s, `fail_run`'s or `kill_run`'s), and when the server stops answering, metrics
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
            try:
                return super().log_metrics(metrics, step)
            except RestException:
                raise
            except UNREACHABLE as e:
                self.lose(e, f"step {step or 0}")
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
            try:
                with _named(Path(path), name) as file:
                    self.experiment.log_artifact(self.run_id, str(file), resume.ARTIFACT_DIR)
                if name == resume.BEST:
                    self.experiment.set_tag(self.run_id, resume.BEST_TAG, Path(path).name)
            except RestException:
                raise
            except UNREACHABLE as e:
                self.lose(e, f"uploading {Path(path).name}")
                return
            self._uploaded[name] = sent

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
            try:
                for p in artifacts:
                    self.experiment.log_artifact(self.run_id, str(p), artifact_path="report")
                for key, value in (tags or {}).items():
                    self.experiment.set_tag(self.run_id, key, value)
                self.experiment.set_terminated(self.run_id, status=status)
                return True
            except RestException:
                raise
            except UNREACHABLE as e:
                self.lose(e, f"the run's end ({status})")
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


def mlflow_logger(loggers: list[Any]) -> MLFlowLogger | None:
    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)


def build_logger(node: DictConfig) -> Any:
    """A logger, its tags as strings: an MLflow server refuses a non-string tag (the seed), the local store does not."""
    if not node.get("tags"):
        return instantiate(node)
    tags = OmegaConf.to_container(node.tags, resolve=True)
    return instantiate(node, tags={k: str(v) for k, v in tags.items() if v is not None})


def run_config(cfg: DictConfig) -> DictConfig:
    """The run's own config: without Hydra's node (present when composed by the API in tests)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat `a.b.c` keys (MLflow params), paths left out."""
    container = OmegaConf.to_container(run_config(cfg), resolve=True)
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", {k: v for k, v in container.items() if k not in ("paths", "hydra")})
    return out


def start_tracking(
    cfg: DictConfig, mlf: MLFlowLogger | None, output_dir: Path, *, kind: str
) -> None:
    """Params, the config artifact and bookkeeping tags, before any training or testing."""
    if mlf is None:
        return
    if isinstance(mlf, RunLogger):
        mlf.unlogged_path = output_dir / UNLOGGED
    params = flat_params(cfg)
    if cfg.get("logger") and cfg.logger.get("mlflow") and cfg.logger.mlflow.get("run_id"):
        # A resumed run (`recolab.resume.prepare`): its params describe it as it started; settings
        # derived from folders differ where it resumes in another project copy, and MLflow
        # refuses to change a logged param.
        logged = mlf.experiment.get_run(mlf.run_id).data.params
        params = {k: v for k, v in params.items() if k not in logged}
    mlf.log_hyperparams(params)
    if kind == "train" and isinstance(mlf, RunLogger):
        mlf.log_checkpoints = bool(cfg.get("log_checkpoints", True))
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(run_config(cfg), resolve=True))
    mlf.experiment.log_artifact(mlf.run_id, str(config_path))
    for key, value in {
        "recolab.kind": kind,
        "recolab.output_dir": str(output_dir),
        "recolab.tags": ",".join(map(str, cfg.get("tags") or [])),
    }.items():
        mlf.experiment.set_tag(mlf.run_id, key, value)
    # How the run looks in MLflow's UI: the model-training view, a name of its own (recolab.tracking).
    tracking.mark_model_training(mlf.experiment, mlf.experiment_id)
    tracking.name_run(mlf.experiment, mlf.run_id, str(cfg.run_name))


def sweep_id() -> str | None:
    """The sweep's id (its folder's name) when this run is a job of a Hydra multirun, else None."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().runtime.output_dir).parent.name


def track_extras(
    mlf: MLFlowLogger | None, datamodule: pl.LightningDataModule, resumed_from: Path | None
) -> None:
    """Data-quality counts (`data/dropped_rows`, `data/oov_rows/...`, as the table
    `data/quality.json`: `recolab.tracking.log_data_quality`), the sweep tag, the resume tag."""
    if mlf is None:
        return
    quality = getattr(datamodule, "quality_metrics", dict)()
    if quality and getattr(mlf, "lost", None) is None:
        try:
            tracking.log_data_quality(mlf.experiment, mlf.run_id, quality)
        except RestException:
            raise
        except UNREACHABLE as e:
            if not isinstance(mlf, RunLogger):
                raise
            mlf.lose(e, "logging the data's quality table")
    if sid := sweep_id():
        mlf.experiment.set_tag(mlf.run_id, "recolab.sweep", sid)
    resume.mark_resumed(mlf, resumed_from)


def finish_run(
    cfg: DictConfig,
    *,
    title: str,
    datamodule: pl.LightningDataModule,
    module: pl.LightningModule,
    mlf: MLFlowLogger | None,
    metrics: dict[str, float],
    output_dir: Path,
    checkpoint: str,
) -> None:
    """Write the report, log it, mark the run complete, and print the table (rank zero only).

    A run without test metrics (no test batch: `trainer.limit_test_batches=0`, say) is not
    complete: it raises, so the caller marks it FAILED. A run whose tracking server stopped
    answering prints its table, then raises `TrackingIncomplete`.
    """
    if not any(k.startswith("test/") for k in metrics):
        raise RuntimeError(
            f"{title}: the test split of {datamodule.source_path} gave no metrics (no test batch ran: "
            "check trainer.limit_test_batches); the run is not complete"
        )
    context = {
        "experiment": cfg.exp_name,
        "data": datamodule.source_path,
        "seed": cfg.seed,
        "checkpoint": checkpoint,
        "mlflow run": mlf.run_id if mlf else "not tracked",
    }
    paths = module.write_report(
        output_dir / "report", title=title, metrics=metrics, context=context
    )
    # Validation metrics per epoch, as a plot in the report (recolab.console.EpochSummary keeps them).
    paths += report_curves(getattr(module, "_trainer", None), output_dir / "report")
    model = log_run_model(cfg, module=module, datamodule=datamodule, mlf=mlf)
    link = ui_view(mlf, metrics)  # the run list's saved view with the headline metrics
    recorded = True
    if isinstance(mlf, RunLogger):
        recorded = mlf.end("FINISHED", paths, {"recolab.complete": "true"})
    elif mlf is not None:
        for p in paths:
            mlf.experiment.log_artifact(mlf.run_id, str(p), artifact_path="report")
        mlf.experiment.set_tag(mlf.run_id, "recolab.complete", "true")
        mlf.experiment.set_terminated(mlf.run_id, status="FINISHED")
    table = module.metrics_markdown(metrics)
    where = [f"outputs: {output_dir}", f"checkpoint: {checkpoint}"]
    if model:
        where.append(f"model: {model} (mlflow.pyfunc.load_model, or mlflow models serve -m ...)")
    if mlf is not None:
        where += [
            f"mlflow: run {mlf.run_id} in experiment {cfg.experiment_name!r} at {mlf._tracking_uri}",
            "        open it with `make ui` (or `mlflow ui --backend-store-uri <that uri>`)"
            + (f", then {link}" if link else ""),
        ]
    print(f"\n{title} (seed {cfg.seed}):\n{table}\n" + "\n".join(where), file=sys.stdout)
    if not recorded:
        raise mlf.incomplete(output_dir)


def ui_view(mlf: MLFlowLogger | None, metrics: dict[str, float]) -> str | None:
    """Add the run's headline metrics to recolab's saved view of the experiment's run list
    (`recolab.tracking.preset_view`) and return the UI link that opens it; None where the run is
    not tracked or the server stopped answering."""
    if mlf is None or getattr(mlf, "lost", None) is not None:
        return None
    try:
        tracking.preset_view(mlf.experiment, mlf.experiment_id, metrics)
    except RestException:
        raise
    except UNREACHABLE as e:
        if not isinstance(mlf, RunLogger):
            raise
        mlf.lose(e, "saving the run list's view")
        return None
    return tracking.ui_link(mlf._tracking_uri, mlf.experiment_id)


def log_run_model(
    cfg: DictConfig,
    *,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    mlf: MLFlowLogger | None,
) -> str | None:
    """Log the tested model as the run's MLflow Model (`log_model: true`, `recolab.serving`) and
    return its URI; None where the run is not tracked or the server stopped answering (what a
    server that is gone raises is handled as for metrics; anything else fails the run)."""
    if mlf is None or not cfg.get("log_model") or getattr(mlf, "lost", None) is not None:
        return None
    from recolab.serving import log_model  # MLflow's model code, only where a model is logged
    from recolab.tracking import TrackingError, check_reachable

    try:
        return log_model(
            cfg,
            module=module,
            datamodule=datamodule,
            run_id=mlf.run_id,
            tracking_uri=mlf._tracking_uri,
        )
    except RestException:
        raise
    except UNREACHABLE as e:
        if not isinstance(mlf, RunLogger):
            raise
        try:
            check_reachable(mlf._tracking_uri)
        except TrackingError:
            mlf.lose(e, "logging the model")
            return None
        raise


def fail_run(mlf: MLFlowLogger | None, status: str = "FAILED") -> None:
    """Mark the MLflow run FAILED (or KILLED): a run that raised is never left RUNNING or FINISHED.

    Where the server is gone, the status waits in the run's `unlogged_tracking.jsonl`, unless the
    run's end is already there (a run whose only failure is that tracking stopped).
    """
    if mlf is None or not mlf._run_id:
        return
    if isinstance(mlf, RunLogger):
        mlf.end(status)
    else:
        mlf.experiment.set_terminated(mlf.run_id, status=status)


def kill_run(mlf: MLFlowLogger | None, output_dir: Path) -> None:
    """A run stopped by SIGTERM: mark it KILLED and say on stderr where its last checkpoint is."""
    fail_run(mlf, "KILLED")
    kept = resume.checkpoint_files(output_dir)
    where = (
        f"the last checkpoint is kept at {kept[0]}; resume with the same command and ckpt_path=last"
        if kept
        else f"no checkpoint was written yet (run folder {output_dir}); start it again to train"
    )
    print(f"recolab: killed by SIGTERM; {where}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The training process


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM outside Lightning's loops (data loading, between fit and test, the report).

    Inside them Lightning's own handler wraps this one: its loop raises at the next batch boundary.
    """
    if signal.getsignal(signal.SIGTERM) is _raise_on_sigterm:
        raise SIGTERMException(143)


@contextlib.contextmanager
def training_process() -> Iterator[None]:
    """What `python -m recolab train|evaluate` sets for its run, undone after it (multirun jobs,
    tests): MLflow's `QUICK_REQUESTS` where unset, and SIGTERM ending the run as KILLED."""
    before = {k: os.environ.get(k) for k in QUICK_REQUESTS}
    for k, v in QUICK_REQUESTS.items():
        os.environ.setdefault(k, v)
    handler = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)


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
