"""The console: `--help`, the known noise filtered by its exact messages, the model summary
without uncounted FLOPs, Optuna's lines without colour codes, the per-epoch line's choice."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from recolab import console
from tests.conftest import ROOT


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_tasks_and_how_to_see_a_config() -> None:
    for flag in ("--help", "-h"):
        done = subprocess.run(
            [sys.executable, "-m", "recolab", flag], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        for task in ("train", "evaluate", "compare", "data", "sync"):
            assert f"\n  {task} " in done.stdout
        assert "--cfg job" in done.stdout and "train --help" in done.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "recolab", "trian"], capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode == 1 and "python -m recolab --help" in wrong.stderr


def test_quiet_drops_exactly_the_known_messages(caplog) -> None:
    console.quiet()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info(
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
            "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, ..."
        )
        logger.info(
            "💡 Tip: For seamless cloud uploads and versioning, try installing "
            "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint, ..."
        )
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        console.quiet()  # pytest resets filters per test: install them inside this block
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ... instead.",
            FutureWarning,
            stacklevel=2,
        )
        warnings.warn(
            "You have overridden `transfer_batch_to_device` in `LightningModule` but have passed "
            "in a `LightningDataModule`. It will use the implementation from `LightningModule`.",
            UserWarning,
            stacklevel=2,
        )
        warnings.warn("some other deprecation", FutureWarning, stacklevel=2)
        warnings.warn("You have overridden `on_train_start` somewhere", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == [
        "some other deprecation",
        "You have overridden `on_train_start` somewhere",
    ]


def test_alembic_plugin_lines_are_gone_at_info_level() -> None:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='[HYDRA] %(message)s')\n"
        "from recolab.console import quiet; quiet()\n"
        "import alembic.autogenerate\n"
        "logging.getLogger('alembic.runtime.migration').info('kept')\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert "setup plugin" not in done.stderr and "[HYDRA] kept" in done.stderr


def test_optuna_logs_plain_text_through_hydra_logging() -> None:
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout, "
        "format='[HYDRA] %(message)s')\n"
        "from omegaconf import OmegaConf\n"
        "from recolab.console import PlainOptunaLogs\n"
        "cfg = OmegaConf.create({'hydra': {'sweeper': {'_target_': "
        "'hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper'}}})\n"
        "PlainOptunaLogs().on_multirun_start(cfg)\n"
        "import optuna; optuna.create_study(study_name='s')\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert "[HYDRA] A new study created in memory with name: s" in done.stdout
    assert "\x1b[" not in done.stdout + done.stderr


def test_model_summary_leaves_out_flops_it_did_not_count(caplog) -> None:
    data = [
        (" ", ["0", "1"]),
        ("Name", ["model", "heads"]),
        ("Type", ["MMoE", "ModuleDict"]),
        ("Params", ["89.7 K", "0"]),
        ("Mode", ["train", "train"]),
        ("FLOPs", ["0", "0"]),
    ]
    with caplog.at_level(logging.INFO, logger="recolab.console"):
        console.ModelSummary.summarize(data, 89_700, 89_700, 0.359, {"train": 30, "eval": 0}, 0)
        console.ModelSummary.summarize(data, 89_700, 89_700, 0.359, {"train": 30, "eval": 0}, 5e6)
    without, with_flops = (r.getMessage() for r in caplog.records)
    assert "FLOPs" not in without and "MMoE" in without and "89.7 K     Total params" in without
    assert "| FLOPs" in with_flops and "5.0 M      Total FLOPs" in with_flops


def test_the_epoch_line_shows_what_the_module_logs_by_task() -> None:
    summary = console.EpochSummary(metrics=["val/*auc/*", "val/recall*"])
    logged = {
        "val/loss": 0.5,
        "val/loss/click": 0.3,
        "val/auc/click": 0.71,
        "val/logloss/click": 0.3,
        "val/gauc/click": 0.65,
        "val/xauc/watch_time": 0.6,
        "val/new_auc/click": 0.7,  # a metric the module gained: matched by the glob
    }
    assert summary.chosen(logged) == [
        "val/loss",
        "val/auc/click",
        "val/gauc/click",
        "val/xauc/watch_time",
        "val/new_auc/click",
    ]

    class Trainer:
        current_epoch, max_epochs, global_step = 1, 3, 40

    line = summary.line(Trainer(), logged, 0.41234)
    assert line == (
        "epoch 2/3 step 40 | train loss 0.4123 | val loss 0.5000 | click: auc 0.7100 "
        "gauc 0.6500 new_auc 0.7000 | watch_time: xauc 0.6000"
    )
    # No glob matches (a module logging other names): every val metric but the per-task losses.
    assert console.EpochSummary(metrics=["val/ndcg*"]).chosen(logged)[:3] == [
        "val/loss",
        "val/auc/click",
        "val/logloss/click",
    ]


def test_history_survives_a_resume_and_the_best_checkpoint_s_restore() -> None:
    summary = console.EpochSummary()
    entries = [
        {"epoch": e, "step": 10 * (e + 1), "metrics": {"val/loss": 1.0 - e}} for e in range(4)
    ]
    summary.history = entries
    state = {"history": entries[:2]}  # the best checkpoint, written at epoch 2
    summary.load_state_dict(state)  # trainer.test(ckpt_path="best") restores it
    assert [h["epoch"] for h in summary.history] == [0, 1, 2, 3]
    fresh = console.EpochSummary()
    fresh.load_state_dict(summary.state_dict())  # a resumed run
    assert fresh.history == entries
