"""`python -m recolab train +exp=...`: compose, train, test the best checkpoint, report, track.

`train(cfg)` instantiates the data module, model, pipeline module, callbacks, loggers and trainer
from the config, fits, tests the best checkpoint on the test split, writes the report, and returns
the test metrics.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from recolab import resume, tracking
from recolab.allocator import tune_malloc
from recolab.config_validation import top_level_keys, validate_config
from recolab.stacks import KeepStackDumps, dump_stacks_on_signal

log = logging.getLogger(__name__)

#: The repository's `configs/` (src layout: src/recolab/train.py -> ../../configs).
CONFIG_DIR = os.environ.get("RECOLAB_CONFIG_DIR") or str(
    Path(__file__).resolve().parents[2] / "configs"
)


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


def start_tracking(
    cfg: DictConfig, mlf: MLFlowLogger | None, output_dir: Path, *, kind: str
) -> None:
    """Params, the config artifact and bookkeeping tags, before any training or testing."""
    if mlf is None:
        return
    mlf.log_hyperparams(flat_params(cfg))
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


def build(cfg: DictConfig, datamodule: pl.LightningDataModule) -> tuple[Any, pl.LightningModule]:
    """The model and the pipeline module, given what the set-up data module provides.

    A data module offers `model_inputs()` and `module_inputs()` (e.g. `schema`, `num_items`);
    each target receives those its constructor accepts. Objects go in after instantiation:
    Hydra would turn a dataclass argument into a DictConfig.
    """

    def bind(node: DictConfig, available: dict[str, Any], **given: Any) -> Any:
        partial = instantiate(node, _partial_=True)
        params = inspect.signature(partial.func).parameters
        return partial(**{k: v for k, v in available.items() if k in params}, **given)

    model = bind(cfg.model, datamodule.model_inputs())
    module = bind(cfg.module, datamodule.module_inputs(), model=model)
    return model, module


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
    complete: it raises, so the caller marks it FAILED.
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
    if mlf is not None:
        for p in paths:
            mlf.experiment.log_artifact(mlf.run_id, str(p), artifact_path="report")
        mlf.experiment.set_tag(mlf.run_id, "recolab.complete", "true")
        mlf.experiment.set_terminated(mlf.run_id, status="FINISHED")
    table = module.metrics_markdown(metrics)
    where = [f"outputs: {output_dir}", f"checkpoint: {checkpoint}"]
    if mlf is not None:
        where += [
            f"mlflow: run {mlf.run_id} in experiment {cfg.experiment_name!r} at {mlf._tracking_uri}",
            "        open it with `make ui` (or `mlflow ui --backend-store-uri <that uri>`)",
        ]
    print(f"\n{title} (seed {cfg.seed}):\n{table}\n" + "\n".join(where), file=sys.stdout)


def fail_run(mlf: MLFlowLogger | None) -> None:
    """Mark the MLflow run FAILED: a run that raised is never left RUNNING or FINISHED."""
    if mlf is not None and mlf._run_id:
        mlf.experiment.set_terminated(mlf.run_id, status="FAILED")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one experiment; return the test metrics."""
    validate_config(
        cfg, known_top_level=top_level_keys(CONFIG_DIR, "train")
    )  # before any data is read
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    if cfg.get("malloc_tuning", True):
        tune_malloc()  # keep the step's blocks in the process (recolab.allocator)
    if cfg.get("logger") and "mlflow" in cfg.logger:
        tracking.check_reachable(cfg.logger.mlflow.tracking_uri)
    resume_from = resume.prepare(cfg)  # ckpt_path=last|<file>: that run's folder and MLflow run

    # The trainer first: Lightning checks the strategy, accelerator and devices as it is built
    # (`trainer.strategy=dpp`, a GPU asked for where there is none), before any data is read.
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [
        resume.RNGState(),
        KeepStackDumps(),
    ]
    # Rank zero alone builds loggers: under torchrun or SLURM every rank starts at once, and their
    # MLflow clients would race to create the local store (rank_zero_only.rank reads RANK,
    # LOCAL_RANK or SLURM_PROCID; Lightning's own launcher sets LOCAL_RANK on the ranks it starts).
    loggers = (
        [build_logger(c) for c in (cfg.get("logger") or {}).values()]
        if rank_zero_only.rank == 0
        else []
    )
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if resume_from is not None:  # the run's own data, or a clear error before any step
        resume.check_same_data(resume_from, datamodule.state_dict())
    model, module = build(cfg, datamodule)
    if cfg.get("compile"):
        model.compile()  # in place: state_dict keys, hence checkpoints, stay those of the plain model

    mlf = mlflow_logger(loggers) if trainer.is_global_zero else None
    output_dir = Path(cfg.paths.output_dir)
    try:
        start_tracking(cfg, mlf, output_dir, kind="train")
        track_extras(mlf, datamodule, resume_from)
        module.run_info = {
            "config": OmegaConf.to_yaml(run_config(cfg), resolve=True),
            "run_id": mlf.run_id if mlf else "",
        }
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        selection = {}  # a sweep that optimizes a val/ metric reads it on the tested (best) checkpoint
        if str(cfg.get("optimized_metric") or "").startswith("val/"):
            trainer.validate(
                module, datamodule=datamodule, ckpt_path="best" if best else None, verbose=False
            )
            selection = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            }
        trainer.test(module, datamodule=datamodule, ckpt_path="best" if best else None)
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("test/", "oracle/"))
        }
        if trainer.is_global_zero:
            finish_run(
                cfg,
                title=f"recolab report: {cfg.exp_name}",
                datamodule=datamodule,
                module=module,
                mlf=mlf,
                metrics=metrics,
                output_dir=output_dir,
                checkpoint=best or "(last weights, no checkpoint)",
            )
    except BaseException:
        fail_run(mlf)
        raise
    return metrics | selection


def build_logger(node: DictConfig) -> Any:
    """A logger, its tags as strings: an MLflow server refuses a non-string tag (the seed), the local store does not."""
    if not node.get("tags"):
        return instantiate(node)
    tags = OmegaConf.to_container(node.tags, resolve=True)
    return instantiate(node, tags={k: str(v) for k, v in tags.items() if v is not None})


def sweep_id() -> str | None:
    """The sweep's id (its folder's name) when this run is a job of a Hydra multirun, else None."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().runtime.output_dir).parent.name


def track_extras(
    mlf: MLFlowLogger | None, datamodule: pl.LightningDataModule, resumed_from: Path | None
) -> None:
    """Data-quality counts (`data/dropped_rows`, `data/oov_rows/...`), the sweep tag, the resume tag."""
    if mlf is None:
        return
    quality = getattr(datamodule, "quality_metrics", dict)()
    if quality:
        mlf.log_metrics(quality)
    if sid := sweep_id():
        mlf.experiment.set_tag(mlf.run_id, "recolab.sweep", sid)
    resume.mark_resumed(mlf, resumed_from)


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweeper (Optuna) optimizes: the metric `cfg.optimized_metric` names, if any."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} is not among this run's metrics: {sorted(metrics)}"
        )
    return metrics[name]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return optimized_value(cfg, train(cfg))


if __name__ == "__main__":
    dump_stacks_on_signal()
    main()
