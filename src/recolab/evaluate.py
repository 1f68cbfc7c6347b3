"""`python -m recolab evaluate ckpt_path=...`: the offline report for a checkpoint, as a new run.

The checkpoint carries its training config and data vocabularies (`RankModule.run_info`), so the
model is rebuilt exactly; `data=<option>` (with its keys) evaluates it on another data config, its
ids encoded with the training vocabularies. A checkpoint is data: it loads with `weights_only=True`,
and the nodes of its stored config that Hydra instantiates may name only recolab's own classes
(`recolab.checkpoint_config`), checked before anything is built or read. The evaluation is logged
to MLflow as a new run, nested under the training run (`mlflow.parentRunId`) and tagged
`recolab.kind=evaluate`.

`run_id=<MLflow run id>` evaluates that training run's best checkpoint, and `ckpt_path=runs:/<run
id>/checkpoints/last.ckpt` (or `best.ckpt`) a checkpoint the run logged (`recolab.run_logger.
RunLogger` uploads both as they are written): the file is downloaded from the tracking store into
the evaluation's folder and goes through the same checks as a local one, so a copy of the project
that never saw the run's `outputs/` evaluates it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from recolab import lifecycle, tracking
from recolab.checkpoint_config import REBUILT, check_stored_config
from recolab.compose import CONFIG_DIR, build
from recolab.config_validation import ConfigError, top_level_keys, validate_config
from recolab.resume import (
    ARTIFACT_DIR,
    BEST,
    fetch_checkpoint,
    load_weights_only,
    mlflow_reference,
    rebased,
    tracking_uri_of,
)
from recolab.stacks import KeepStackDumps, dump_stacks_on_signal

log = logging.getLogger(__name__)


def load_checkpoint(path: str) -> dict:
    """A recolab checkpoint, loaded with `weights_only=True` (no arbitrary code runs)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file")
    ckpt = load_weights_only(path)  # CheckpointError (a ValueError) if torch refuses it
    if "recolab" not in ckpt or "config" not in ckpt["recolab"]:
        raise ValueError(
            f"ckpt_path={path}: not a recolab checkpoint (no 'recolab' entry with the run's config)"
        )
    return ckpt


def checkpoint_source(cfg: DictConfig) -> str:
    """What is evaluated: `ckpt_path`, or `runs:/<run_id>/checkpoints/best.ckpt` for `run_id=`."""
    run_id, ckpt = cfg.get("run_id"), cfg.get("ckpt_path")
    if bool(run_id) == bool(ckpt):
        given = "both" if run_id else "neither"

        def shown(v: object) -> str:
            return "null" if v is None else repr(v)

        raise ConfigError(
            f"evaluate needs one of ckpt_path=<checkpoint file, or runs:/<run id>/"
            f"{ARTIFACT_DIR}/<{BEST}|last.ckpt>> and run_id=<MLflow run id> (its best "
            f"checkpoint); {given} given (ckpt_path={shown(ckpt)}, run_id={shown(run_id)})"
        )
    return f"runs:/{run_id}/{ARTIFACT_DIR}/{BEST}" if run_id else str(ckpt)


def local_checkpoint(cfg: DictConfig, source: str) -> str:
    """The checkpoint file for `source`: itself, or the MLflow artifact it names downloaded into
    the evaluation's folder (a bare run id: its best checkpoint)."""
    reference = mlflow_reference(source)
    if reference is None:
        return source
    run_id, artifact = reference
    uri = tracking_uri_of(cfg)
    tracking.check_reachable(uri)
    into = Path(cfg.paths.output_dir) / ARTIFACT_DIR
    path = fetch_checkpoint(
        run_id, artifact or f"{ARTIFACT_DIR}/{BEST}", uri, into, requested=source
    )
    log.info("evaluating %s, downloaded to %s", source, path)
    return str(path)


def _data_here(run_cfg: DictConfig, cfg: DictConfig) -> DictConfig:
    """The run's data config, its paths under the run's folders moved to this project's (the run
    may have trained in another copy of the project, on another machine: `recolab.resume.rebased`)."""
    container = OmegaConf.to_container(run_cfg.data, resolve=False)
    stored = OmegaConf.to_container(run_cfg.get("paths") or {}, resolve=False)
    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    data, moved = rebased(container, stored, paths)
    for change in moved:
        log.info("the run's data, in this project: data%s", change)
    return OmegaConf.create(data)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild the checkpoint's model, test it on the chosen data, report and track; return the metrics."""
    validate_config(
        cfg, known_top_level=top_level_keys(CONFIG_DIR, "evaluate")
    )  # before any data is read
    source = checkpoint_source(cfg)
    path = local_checkpoint(cfg, source)
    ckpt = load_checkpoint(path)
    # A checkpoint is data: the nodes built from it name only recolab's classes (CheckpointError).
    rebuilt = [k for k in REBUILT if k != "data" or not cfg.get("data")]  # `data=`: the user's
    run_cfg = check_stored_config(ckpt["recolab"]["config"], path, rebuilt=rebuilt)
    train_run_id = ckpt["recolab"].get("run_id", "")
    lifecycle.check_tracking(cfg)

    with open_dict(cfg):
        cfg.exp_name = run_cfg.exp_name
        cfg.seed = run_cfg.seed
        cfg.run_name = f"evaluate-{run_cfg.exp_name}-seed{run_cfg.seed}"
    # Rank zero alone tracks and reports, as in `train` (under DDP every rank runs this function);
    # the run is linked to the training run and takes its model and data tags.
    loggers = lifecycle.build_loggers(cfg, trained_by=train_run_id)
    # The trainer before the data, as in `train`: what Lightning refuses fails in seconds.
    trainer: pl.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=[KeepStackDumps()]
    )

    data_cfg = cfg.data if cfg.get("data") else _data_here(run_cfg, cfg)
    datamodule: pl.LightningDataModule = instantiate(data_cfg)
    datamodule.load_state_dict(ckpt["recolab"]["data_state"])
    datamodule.prepare_data()
    datamodule.setup("test")
    model, module = build(run_cfg, datamodule)
    module.load_state_dict(ckpt["state_dict"])

    # Recorded as the checkpoint's run on this data, with the run's tags and this evaluation's
    # (`tags: [evaluate]`, and any given); data quality: OOV ids under the checkpoint's vocabularies.
    tags = list(dict.fromkeys([*(run_cfg.get("tags") or []), *(cfg.get("tags") or [])]))
    recorded = OmegaConf.merge(run_cfg, {"data": data_cfg, "ckpt_path": source, "tags": tags})
    with lifecycle.tracked(
        cfg, trainer, loggers, kind="evaluate", datamodule=datamodule, recorded=recorded
    ) as run:
        trainer.test(module, datamodule=datamodule)
        return run.finish(
            module,
            datamodule,
            title=f"recolab evaluation: {run_cfg.exp_name}",
            checkpoint=source,
        )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with tracking.keep_tracking_env(), lifecycle.training_process():
        evaluate(cfg)


if __name__ == "__main__":
    dump_stacks_on_signal()
    main()
