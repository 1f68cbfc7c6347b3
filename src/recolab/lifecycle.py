"""A run from start to end: its own folder, its MLflow run, and how each way of ending is recorded.

`train` and `evaluate` share it: `check_tracking` and `claim_run_dir` before any data is read,
`build_loggers` (and `build_callbacks` for training) as the trainer is built, then the run
itself inside `with tracked(...) as run:`, which starts its MLflow record and records how it
ends; `Run.finish` writes, logs and prints the report.

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
(`recolab.run_logger`) leaves the status to the functions here. Its name stays
`recolab.lifecycle.RunLogger` (imported here): configs/logger/mlflow.yaml and the configs stored
in runs and checkpoints use it, and a resumed run compares its stored config with its own.

**A tracking server that stops answering** costs seconds, not MLflow's ~12 minutes of retries:
the training process asks MLflow for few, short retries (`QUICK_REQUESTS`, where the user has
not set them), and `RunLogger` keeps what it could not send (metrics, then the report and the
final status) in `<run folder>/unlogged_tracking.jsonl` while training, checkpointing and
testing go on. The run then ends with `TrackingIncomplete` (a non-zero exit) saying what is
missing and the command that records it once the server is back:
`python -m recolab sync <run folder>` (`recolab.run_logger.replay_unlogged`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from recolab import resume, tracking
from recolab.console import report_curves
from recolab.run_logger import UNLOGGED, RunLogger, is_lost, unless_lost
from recolab.stacks import KeepStackDumps

log = logging.getLogger(__name__)

MARKER = "run.lock"

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
# Setting a run up


def check_tracking(cfg: DictConfig) -> None:
    """Fail in seconds, before any data is read, where the run's MLflow store cannot be used."""
    if cfg.get("logger") and "mlflow" in cfg.logger:
        tracking.check_reachable(cfg.logger.mlflow.tracking_uri)


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """A training run's callbacks: the configured ones (one set to null,
    `callbacks.early_stopping=null`, is left out), the random state for an exact resume
    (`recolab.resume.RNGState`) and the stack dumps kept in the run's folder."""
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    return configured + [resume.RNGState(), KeepStackDumps()]


def build_loggers(cfg: DictConfig, *, trained_by: str = "") -> list[Any]:
    """The run's loggers, their tags as strings (an MLflow server refuses a non-string tag, the
    seed; the local store does not).

    Rank zero alone builds them: under torchrun or SLURM every rank starts at once, and their
    MLflow clients would race to create the local store (`rank_zero_only.rank` reads RANK,
    LOCAL_RANK or SLURM_PROCID; Lightning's own launcher sets LOCAL_RANK on the ranks it starts).
    An evaluation of a checkpoint that the MLflow run `trained_by` wrote is linked to it
    (`mlflow.parentRunId`, `recolab.train_run`) and takes its `recolab.model` and `recolab.data`
    tags (`_model_and_data_tags`) where its own logger config does not set them.
    """
    if rank_zero_only.rank != 0:
        return []
    inherited = _model_and_data_tags(cfg, trained_by)
    links = (
        {"mlflow.parentRunId": trained_by, "recolab.train_run": trained_by} if trained_by else {}
    )
    built = []
    for node in (cfg.get("logger") or {}).values():
        if not (node.get("tags") or inherited or links):
            built.append(instantiate(node))
            continue
        own = OmegaConf.to_container(node.get("tags") or {}, resolve=True)
        own = {k: str(v) for k, v in own.items() if v is not None}
        built.append(instantiate(node, tags={**inherited, **own, **links}))
    return built


def _model_and_data_tags(cfg: DictConfig, train_run_id: str) -> dict[str, str]:
    """The training run's `recolab.model` and `recolab.data` tags, for the evaluation's run.

    Its own config has no model group (the checkpoint's model is evaluated) and a data group
    only when `data=` is given (which then names it): these come from the run that trained the
    checkpoint, where it is in the same store.
    """
    if not train_run_id or not (cfg.get("logger") and "mlflow" in cfg.logger):
        return {}
    from mlflow.tracking import MlflowClient

    try:
        tags = MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri).get_run(train_run_id)
    except MlflowException:  # trained into another store: the tags stay unset, as before
        return {}
    return {k: v for k, v in tags.data.tags.items() if k in ("recolab.model", "recolab.data")}


def mlflow_logger(loggers: list[Any]) -> MLFlowLogger | None:
    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)


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


#: MLflow's limit on a tag's value (characters) in the versions recolab supports.
TAG_LIMIT = 5000


def command_line() -> str | None:
    """This job's Hydra overrides as a JSON list (the tag `recolab.overrides`), or None outside
    a Hydra run or when too long for a tag (`recolab select` then reads `.hydra/overrides.yaml`)."""
    if not HydraConfig.initialized():
        return None
    text = json.dumps([str(o) for o in HydraConfig.get().overrides.task])
    return text if len(text) <= TAG_LIMIT else None


# ---------------------------------------------------------------------------------------------
# From start to end


@dataclasses.dataclass
class Run:
    """A run between its start and its end (`tracked` yields it to `train` and `evaluate`)."""

    cfg: DictConfig
    trainer: pl.Trainer
    mlf: MLFlowLogger | None  # rank zero's MLflow logger; None on other ranks or untracked
    output_dir: Path

    def info(self) -> dict[str, str]:
        """What the pipeline module saves in its checkpoints (`run_info`): the run's config, from
        which `recolab evaluate` rebuilds the run, and its MLflow run."""
        return {
            "config": OmegaConf.to_yaml(run_config(self.cfg), resolve=True),
            "run_id": self.mlf.run_id if self.mlf else "",
        }

    @property
    def best(self) -> str:
        """The best checkpoint's file, or "" where no checkpoint was written."""
        callback = self.trainer.checkpoint_callback
        return callback.best_model_path if callback else ""

    def logged(self, *prefixes: str) -> dict[str, float]:
        """The metrics of the trainer's last loop whose names start with one of `prefixes`."""
        metrics = self.trainer.callback_metrics.items()
        return {k: float(v) for k, v in metrics if k.startswith(prefixes)}

    def tested_val_metrics(
        self, module: pl.LightningModule, datamodule: pl.LightningDataModule
    ) -> dict[str, float]:
        """The validation metrics of the checkpoint the run tests, logged once more at the last
        step, so that a run's latest `val/...` values in MLflow are those of the checkpoint it
        tested: what a sweep's `optimized_metric` and `recolab select` choose on.

        They are those saved in the best checkpoint (the validation that chose it), or, without a
        checkpoint, the module's last validation's. A best checkpoint written before recolab kept
        them is validated again where `optimized_metric` needs them.
        """
        if self.best:
            stored = resume.read_info(Path(self.best)).get("val_metrics")
        else:
            stored = getattr(module, "val_metrics", None)
        selection = {k: float(v) for k, v in (stored or {}).items() if k.startswith("val/")}
        if selection and self.mlf is not None:
            self.mlf.log_metrics(selection, step=self.trainer.global_step)
        if not selection and str(self.cfg.get("optimized_metric") or "").startswith("val/"):
            best = "best" if self.best else None
            self.trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
            selection = self.logged("val/")
        return selection

    def finish(
        self,
        module: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        *,
        title: str,
        checkpoint: str,
    ) -> dict[str, float]:
        """The test epoch's metrics (`test/...`, `oracle/...`); on rank zero, with the report
        written and logged and the MLflow run FINISHED (`finish_run`)."""
        metrics = self.logged("test/", "oracle/")
        if self.trainer.is_global_zero:
            finish_run(
                self.cfg,
                title=title,
                datamodule=datamodule,
                module=module,
                mlf=self.mlf,
                metrics=metrics,
                output_dir=self.output_dir,
                checkpoint=checkpoint,
            )
        return metrics


@contextlib.contextmanager
def tracked(
    cfg: DictConfig,
    trainer: pl.Trainer,
    loggers: list[Any],
    *,
    kind: str,
    datamodule: pl.LightningDataModule,
    resumed_from: Path | None = None,
    recorded: DictConfig | None = None,
) -> Iterator[Run]:
    """Start the run's MLflow record, yield the `Run`, and record how it ends.

    At the start, the params and config of `recorded` (default `cfg`: an evaluation records the
    checkpoint's run) and the bookkeeping tags (`start_tracking`, `track_extras`). A run the block
    ends with `Run.finish` is FINISHED; one stopped by SIGTERM is KILLED and exits with status 143
    (Lightning's exit is 0: `kill_run`); one that raised is FAILED (`fail_run`). The run's folder
    is released in any case.
    """
    mlf = mlflow_logger(loggers) if trainer.is_global_zero else None
    run = Run(cfg, trainer, mlf, Path(cfg.paths.output_dir))
    try:
        start_tracking(cfg if recorded is None else recorded, mlf, run.output_dir, kind=kind)
        track_extras(mlf, datamodule, resumed_from)
        yield run
    except SIGTERMException:  # `kill`, `docker stop`
        kill_run(mlf, run.output_dir)
        raise SystemExit(143) from None
    except BaseException:
        fail_run(mlf)
        raise
    finally:
        release_run_dir(run.output_dir)


def start_tracking(
    cfg: DictConfig, mlf: MLFlowLogger | None, output_dir: Path, *, kind: str
) -> None:
    """Params, the config artifact and bookkeeping tags, before any training or testing; a
    training run's command-line overrides as the tag `recolab.overrides` (`command_line`)."""
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
    tags = {
        "recolab.kind": kind,
        "recolab.output_dir": str(output_dir),
        "recolab.tags": ",".join(map(str, cfg.get("tags") or [])),
    }
    if kind == "train" and (overrides := command_line()) is not None:
        tags["recolab.overrides"] = overrides
    for key, value in tags.items():
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
    `data/quality.json`: `recolab.tracking.log_data_quality`), the sweep tag, the resume tags."""
    if mlf is None:
        return
    quality = getattr(datamodule, "quality_metrics", dict)()
    if quality and not is_lost(mlf):
        with unless_lost(mlf, "logging the data's quality table"):
            tracking.log_data_quality(mlf.experiment, mlf.run_id, quality)
    if sid := sweep_id():
        mlf.experiment.set_tag(mlf.run_id, "recolab.sweep", sid)
    resume.mark_resumed(mlf, resumed_from, datamodule)


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
    if is_lost(mlf):
        return None
    with unless_lost(mlf, "saving the run list's view"):
        tracking.preset_view(mlf.experiment, mlf.experiment_id, metrics)
    return None if is_lost(mlf) else tracking.ui_link(mlf._tracking_uri, mlf.experiment_id)


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
    if not cfg.get("log_model") or is_lost(mlf):
        return None
    from recolab.serving import log_model  # MLflow's model code, only where a model is logged

    with unless_lost(mlf, "logging the model", confirm=True):
        return log_model(
            cfg,
            module=module,
            datamodule=datamodule,
            run_id=mlf.run_id,
            tracking_uri=mlf._tracking_uri,
        )
    return None


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
