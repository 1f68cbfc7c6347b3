"""`python -m recolab train +exp=...`: compose, train, test the best checkpoint, report, track.

`train(cfg)` instantiates the data module, model, pipeline module, callbacks, loggers and trainer
from the config, fits, tests the best checkpoint on the test split, writes the report, and returns
the test metrics with the tested checkpoint's validation metrics (what a sweep chooses on).

How the run is tracked, and how each way of ending is recorded (FINISHED, FAILED, KILLED), is
`recolab.lifecycle`'s; what `ckpt_path=` resumes, `recolab.resume`'s. The run's command-line
overrides are its MLflow tag `recolab.overrides`, from which `recolab select` runs a chosen
configuration again on other seeds.
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from recolab import lifecycle, resume
from recolab.allocator import tune_malloc
from recolab.compose import CONFIG_DIR, build
from recolab.config_validation import top_level_keys, validate_config
from recolab.run_checks import check_run
from recolab.stacks import dump_stacks_on_signal


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one experiment; return the test metrics and the tested checkpoint's `val/`."""
    validate_config(
        cfg, known_top_level=top_level_keys(CONFIG_DIR, "train")
    )  # before any data is read
    from recolab.serving import check_settings  # the logged model's settings (pandas: lazily)

    check_settings(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    if cfg.get("malloc_tuning", True):
        tune_malloc()  # keep the step's blocks in the process (recolab.allocator)
    lifecycle.check_tracking(cfg)  # a tracking server that does not answer fails in seconds
    resume_from = resume.prepare(cfg)  # ckpt_path=last|<file>|<run id>: that run's folder and run
    allow_inexact = resume.inexact_consent(cfg)  # this invocation's, not a setting of the run
    # This run's own folder, or RunDirError naming the run already there (a forced hydra.run.dir).
    lifecycle.claim_run_dir(cfg.paths.output_dir, resuming=resume_from is not None)

    # The trainer first: Lightning checks the strategy, accelerator and devices as it is built
    # (`trainer.strategy=dpp`, a GPU asked for where there is none), before any data is read.
    callbacks = lifecycle.build_callbacks(cfg)
    loggers = lifecycle.build_loggers(cfg)  # on rank zero only
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if resume_from is not None:  # the run's own data, or a clear error before any step
        resume.check_data(resume_from, datamodule, allow_inexact=allow_inexact)
    model, module = build(cfg, datamodule)
    check_run(cfg, module)  # monitors and optimized_metric against the metrics it logs
    if cfg.get("compile"):
        model.compile()  # in place: state_dict keys, hence checkpoints, stay those of the plain model

    with lifecycle.tracked(
        cfg, trainer, loggers, kind="train", datamodule=datamodule, resumed_from=resume_from
    ) as run:
        module.run_info = run.info()  # kept in checkpoints: `recolab evaluate` rebuilds the run
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        selection = run.tested_val_metrics(module, datamodule)  # logged last: what sweeps read
        trainer.test(module, datamodule=datamodule, ckpt_path="best" if run.best else None)
        metrics = run.finish(
            module,
            datamodule,
            title=f"recolab report: {cfg.exp_name}",
            checkpoint=run.best or "(last weights, no checkpoint)",
        )
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
