"""`python -m recolab train +exp=...`: compose, train, test the best checkpoint, report, track.

`train(cfg)` instantiates the data module, model, pipeline module, callbacks, loggers and trainer
from the config, fits, tests the best checkpoint on the test split, writes the report, and returns
the test metrics.

After fitting, the tested checkpoint's own validation metrics (kept in the checkpoint by the
pipeline module) are logged once more, at the last step, so a run's latest `val/...` values in
MLflow are those of the checkpoint it tested: what a sweep's `optimized_metric` and `recolab
select` choose on. The run's command-line overrides are its tag `recolab.overrides` (JSON), from
which `recolab select` runs a chosen configuration again on other seeds.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from recolab import lifecycle, resume, tracking
from recolab.allocator import tune_malloc
from recolab.config_validation import top_level_keys, validate_config
from recolab.lifecycle import (
    build_logger,
    fail_run,
    finish_run,
    kill_run,
    mlflow_logger,
    run_config,
    start_tracking,
    track_extras,
)
from recolab.run_checks import check_run
from recolab.stacks import KeepStackDumps, dump_stacks_on_signal

log = logging.getLogger(__name__)

#: The repository's `configs/` (src layout: src/recolab/train.py -> ../../configs).
CONFIG_DIR = os.environ.get("RECOLAB_CONFIG_DIR") or str(
    Path(__file__).resolve().parents[2] / "configs"
)


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


def tested_val_metrics(module: pl.LightningModule, best: str) -> dict[str, float]:
    """The validation metrics of the checkpoint the run tests: those saved in `best` (the
    validation that chose it), or, without a checkpoint, the module's last validation's. Empty
    for a checkpoint written before recolab kept them."""
    if best:
        stored = resume.read_info(Path(best)).get("val_metrics")
    else:
        stored = getattr(module, "val_metrics", None)
    return {k: float(v) for k, v in (stored or {}).items() if k.startswith("val/")}


#: MLflow's limit on a tag's value (characters) in the versions recolab supports.
TAG_LIMIT = 5000


def command_line() -> str | None:
    """This job's Hydra overrides as a JSON list (the tag `recolab.overrides`), or None outside
    a Hydra run or when too long for a tag (`recolab select` then reads `.hydra/overrides.yaml`)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    text = json.dumps([str(o) for o in HydraConfig.get().overrides.task])
    return text if len(text) <= TAG_LIMIT else None


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one experiment; return the test metrics."""
    validate_config(
        cfg, known_top_level=top_level_keys(CONFIG_DIR, "train")
    )  # before any data is read
    from recolab.serving import check_settings  # the logged model's settings (pandas: lazily)

    check_settings(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    if cfg.get("malloc_tuning", True):
        tune_malloc()  # keep the step's blocks in the process (recolab.allocator)
    if cfg.get("logger") and "mlflow" in cfg.logger:
        tracking.check_reachable(cfg.logger.mlflow.tracking_uri)
    resume_from = resume.prepare(cfg)  # ckpt_path=last|<file>: that run's folder and MLflow run
    # Consent to an inexact resume (a stream without its position) is this invocation's, not a
    # setting of the run: the run's params keep false, the MLflow tag recolab.resume_exact says it.
    allow_inexact = bool(cfg.get("resume_inexact"))
    if allow_inexact:
        cfg.resume_inexact = False
    # This run's own folder, or RunDirError naming the run already there (a forced hydra.run.dir).
    lifecycle.claim_run_dir(cfg.paths.output_dir, resuming=resume_from is not None)

    # The trainer first: Lightning checks the strategy, accelerator and devices as it is built
    # (`trainer.strategy=dpp`, a GPU asked for where there is none), before any data is read.
    callbacks = [  # a callback set to null (`callbacks.early_stopping=null`) is left out
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None
    ] + [
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
        if hasattr(datamodule, "check_resume"):  # a stream resumes where it stopped, or refuses
            datamodule.check_resume(resume_from, allow_inexact=allow_inexact)
    model, module = build(cfg, datamodule)
    check_run(cfg, module)  # monitors and optimized_metric against the metrics it logs
    if cfg.get("compile"):
        model.compile()  # in place: state_dict keys, hence checkpoints, stay those of the plain model

    mlf = mlflow_logger(loggers) if trainer.is_global_zero else None
    output_dir = Path(cfg.paths.output_dir)
    try:
        start_tracking(cfg, mlf, output_dir, kind="train")
        track_extras(mlf, datamodule, resume_from)
        if mlf is not None and (overrides := command_line()) is not None:
            mlf.experiment.set_tag(mlf.run_id, "recolab.overrides", overrides)
        if mlf is not None and resume_from is not None:
            exact = str(getattr(datamodule, "resume_exact", True)).lower()
            mlf.experiment.set_tag(mlf.run_id, "recolab.resume_exact", exact)
        module.run_info = {
            "config": OmegaConf.to_yaml(run_config(cfg), resolve=True),
            "run_id": mlf.run_id if mlf else "",
        }
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # The tested checkpoint's validation metrics, logged last: what a sweep chooses on.
        selection = tested_val_metrics(module, best)
        if selection and mlf is not None:
            mlf.log_metrics(selection, step=trainer.global_step)
        if not selection and str(cfg.get("optimized_metric") or "").startswith("val/"):
            # A best checkpoint written before recolab kept its validation metrics: validate it.
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
    except SIGTERMException:  # `kill`, `docker stop`: KILLED, exit 143 (Lightning's exit is 0)
        kill_run(mlf, output_dir)
        raise SystemExit(143) from None
    except BaseException:
        fail_run(mlf)
        raise
    finally:
        lifecycle.release_run_dir(output_dir)
    return metrics | selection


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
    with lifecycle.training_process():  # MLflow's quick retries, SIGTERM as KILLED
        return optimized_value(cfg, train(cfg))


if __name__ == "__main__":
    dump_stacks_on_signal()
    main()
