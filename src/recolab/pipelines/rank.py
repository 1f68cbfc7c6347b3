"""The ranking pipeline: a multi-task ranker trained with per-task losses, evaluated on every row.

Validation and test outputs are accumulated per rank, gathered from all ranks at the epoch's end
(`gather_rows`), and only then turned into metrics, so GAUC and XAUC are exact under DDP (never
an average of per-rank values). Metric names follow `split/metric/task`.

Every validation epoch logs the same per-task metrics as the test epoch (`rank_metrics`): AUC,
GAUC, logloss and ECE per binary task, MAE, RMSE, XAUC and XGAUC per regression task (GAUC and
XGAUC grouped by `group_key`, a `meta` column), on the model's own predictions (the calibrator is
fitted on them), so a checkpoint, early stopping, a sweep or `recolab select` can choose on any of
them (`val/gauc/click`, say). The test epoch adds what no choice may read: the calibrated figures'
raw twins, the truth metrics and the oracle's. The last validation's values are kept in every
checkpoint (`checkpoint["recolab"]["val_metrics"]`), so `recolab.train` can log the tested
checkpoint's own validation figures without validating again.

Three optional stages compose with any ranker:

- heads (`recolab.heads`, `module.heads: {task: head}`): a task's loss and served prediction,
  e.g. PAL or the shallow tower for position bias, D2Q for duration bias. Heads read the batch's
  `meta` columns (position, duration), which the ranker never sees, and are fitted on the training
  split where they need it (D2Q's duration groups) when fitting starts.
- calibration (`module.calibration`, a calibrator factory from `recolab.calibration`): at every
  validation, a calibrator per binary task is fitted on that validation's predictions and kept in
  the module's state, so the best checkpoint carries the calibrator fitted on its own validation
  predictions; testing (and `recolab evaluate`) applies it. With negatives downsampled in the
  training data (`data.negative_downsampling`), predictions are first corrected by
  `q = p / (p + (1 - p) / w)` (He et al., ADKDD 2014). The raw model's figures are kept as
  `test/auc_raw/...`, `test/logloss_raw/...`, `test/ece_raw/...`.
- truth (`module.truth: {task: meta column}`, synthetic data only): how well the head's debiased
  score orders rows like the world's truth (`gt_relevance`, `gt_interest`): `test/truth_xauc/task`
  (XAUC against the truth column: the share of row pairs with different truth that the score
  orders the same way) and `test/truth_xgauc/task` (the same within each `group_key` group).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from recolab import calibration as C
from recolab import metrics as M
from recolab.data.columnar import batch_rows
from recolab.data.schema import Schema, Task
from recolab.heads import Head
from recolab.metrics.device import ExactMetrics
from recolab.pipelines.distributed import gather_columns, log_gathered
from recolab.pipelines.flops import TrainingFlops
from recolab.reports.rank_report import metric_table, to_markdown, write_rank_report
from recolab.run_checks import check_finite_loss

log = logging.getLogger(__name__)

Batch = dict[str, dict[str, torch.Tensor]]
ECE_BINS = 15


def task_loss(task: Task, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean loss of one task: BCE on logits, or MSE on the transformed label."""
    if task.kind == "binary":
        return F.binary_cross_entropy_with_logits(output.float(), label)
    target = torch.log1p(label) if task.transform == "log1p" else label
    return F.mse_loss(output.float(), target)


def to_prediction(task: Task, output: torch.Tensor) -> torch.Tensor:
    """A model output -> the task's prediction: a probability, or the label's scale."""
    if task.kind == "binary":
        return torch.sigmoid(output.float())
    if task.transform == "log1p":
        return torch.expm1(output.float()).clamp_min(0.0)
    return output.float()


def rank_metrics(
    schema: Schema,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    groups: np.ndarray | None,
    *,
    full: bool,
    device: torch.device | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics per task (keys `metric/task`) and details (groups left out of GAUC and XGAUC).

    Binary tasks: AUC, logloss and ECE (15 equal-mass bins), plus GAUC by impressions when
    `full` and `groups` is given; regression tasks: MAE, RMSE and exact XAUC, plus XGAUC when
    `full` and `groups` is given.
    """
    out: dict[str, float] = {}
    details: dict[str, Any] = {}
    # AUC, GAUC, XAUC, XGAUC and logloss sorted by torch on `device` (a GPU) when the rows are
    # many, by numpy otherwise: the same exact values (recolab.metrics.device).
    E = ExactMetrics(device)
    for task in schema.tasks:
        y, p = labels[task.name], preds[task.name]
        if task.kind == "binary":
            out[f"auc/{task.name}"] = E.auc(y, p) if 0 < y.sum() < len(y) else float("nan")
            out[f"logloss/{task.name}"] = E.logloss(y, p)
            out[f"ece/{task.name}"] = M.ece(y, p, num_bins=ECE_BINS)
            if full and groups is not None:
                g = E.gauc_details(y, p, groups)
                out[f"gauc/{task.name}"] = g.value
                details[f"gauc/{task.name}"] = g
        else:
            out[f"mae/{task.name}"] = M.mae(y, p)
            out[f"rmse/{task.name}"] = M.rmse(y, p)
            out[f"xauc/{task.name}"] = E.xauc(y, p) if np.ptp(y) > 0 else float("nan")
            if full and groups is not None:
                g = E.xgauc_details(y, p, groups)
                out[f"xgauc/{task.name}"] = g.value
                details[f"xgauc/{task.name}"] = g
    return out, details


class CalibrationStage(nn.Module):
    """Per binary task: the downsampling correction, then a calibrator fitted on validation predictions.

    Its state (rates and fitted calibrators, as plain tensors and strings) is the module's
    "extra state", so it is saved in, and restored from, checkpoints with the model's weights
    (and loads with `torch.load(weights_only=True)`).

    Args:
        factory: makes one unfitted calibrator (e.g. `IsotonicCalibrator`), or None for none.
        rates: `{task: w}`, the share of the task's negatives kept in the training data.
        tasks: the binary tasks to calibrate.
    """

    def __init__(
        self, factory: Callable[[], Any] | None, rates: dict[str, float], tasks: list[str]
    ) -> None:
        super().__init__()
        self.factory = factory
        self.rates = {k: float(v) for k, v in rates.items()}
        self.tasks = list(tasks)
        self.calibrators: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return self.factory is not None or bool(self.rates)

    def applies_to(self, task: str) -> bool:
        return task in self.rates or task in self.calibrators

    def correct(self, task: str, p: np.ndarray) -> np.ndarray:
        return C.downsampling_correction(p, self.rates[task]) if task in self.rates else p

    def fit(self, preds: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
        if self.factory is None:
            return
        for t in self.tasks:
            self.calibrators[t] = self.factory().fit(self.correct(t, preds[t]), labels[t])

    def __call__(self, task: str, p: np.ndarray) -> np.ndarray:
        q = self.correct(task, p)
        return self.calibrators[task](q) if task in self.calibrators else q

    def get_extra_state(self) -> dict[str, Any]:
        def tensors(state: dict[str, Any]) -> dict[str, Any]:
            return {
                k: torch.from_numpy(np.asarray(v, dtype=np.float64))
                if isinstance(v, np.ndarray)
                else v
                for k, v in state.items()
            }

        return {
            "rates": dict(self.rates),
            "calibrators": {t: tensors(c.state_dict()) for t, c in self.calibrators.items()},
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.rates = {k: float(v) for k, v in state.get("rates", {}).items()}
        self.calibrators = {t: C.from_state(s) for t, s in state.get("calibrators", {}).items()}


#: `module.optimizer` -> the torch optimizer.
OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}
#: Adam options that choose (or rule out) an implementation: given any, Adam is not made fused.
FUSED_OFF = {"fused", "foreach", "differentiable"}


class RankModule(TrainingFlops, pl.LightningModule):
    """Trains a multi-task ranker; evaluates it on all rows of each evaluation split.

    Args:
        model: a ranker (`recolab.models.rank`): features -> {task: output (B,)}.
        schema: the data's schema (tasks, meta columns, oracle columns).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        group_key: meta column that GAUC and XGAUC group by.
        heads: `{task: Head}` (see `recolab.heads`); tasks without one use `task_loss` and
            `to_prediction`.
        calibration: a factory of unfitted calibrators (`recolab.calibration`), or None.
        truth: `{task: meta column}` with the debiased truth (synthetic data), for the truth metrics.
        negative_downsampling: `{task: w}` from the data module: the share of negatives it kept
            in the training split (`recolab.data.datamodule.RankDataModule`).
        optimizer: `adam` or `adagrad` (which also takes sparse embedding gradients).
        optimizer_kwargs: passed on to the torch optimizer, e.g. `{foreach: true}` or
            `{fused: false}` (experiments/bench/speed.md measures them). Adam is fused unless
            these choose its implementation, where the torch build has fused Adam for the
            parameters' device.
        report_bootstrap: resamples B of the report's 95% intervals over users (GAUC, XGAUC;
            `recolab.reports.per_user`); 0 for none.
    """

    def __init__(
        self,
        model: nn.Module,
        schema: Schema,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        group_key: str = "user_id",
        heads: dict[str, Head] | None = None,
        calibration: Callable[[], Any] | None = None,
        truth: dict[str, str] | None = None,
        negative_downsampling: dict[str, float] | None = None,
        optimizer: str = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        report_bootstrap: int = 2000,
    ) -> None:
        super().__init__()
        self.report_bootstrap = int(report_bootstrap)
        if not lr > 0:
            raise ValueError(f"module.lr must be > 0, got {lr}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"module.optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}"
            )
        self.optimizer_name = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.model = model
        self.schema = schema
        self.lr = lr
        self.weight_decay = weight_decay
        self.group_key = group_key
        heads = dict(heads or {})
        unknown = [k for k in heads if k not in schema.task_names]
        if unknown:
            raise ValueError(
                f"module.heads: no task(s) {unknown}; the data's tasks are {schema.task_names}"
            )
        for name, head in heads.items():
            if not isinstance(head, Head):
                raise TypeError(
                    f"module.heads.{name}: expected a recolab.heads.Head, got {type(head).__name__}"
                )
            head.bind(schema.task(name), schema.meta)
        self.heads = nn.ModuleDict(heads)
        self.truth = dict(truth or {})
        for name, column in self.truth.items():
            if name not in schema.task_names:
                raise ValueError(
                    f"module.truth: no task {name!r}; the data's tasks are {schema.task_names}"
                )
            if column not in schema.meta:
                raise ValueError(
                    f"module.truth.{name}: column {column!r} is not in data.meta ({list(schema.meta)})"
                )
        rates = dict(negative_downsampling or {})
        for name in rates:
            if name not in schema.task_names or schema.task(name).kind != "binary":
                raise ValueError(
                    f"negative_downsampling: {name!r} is not a binary task of the data ({schema.task_names})"
                )
        binary = [t.name for t in schema.tasks if t.kind == "binary"]
        self.calibration = CalibrationStage(calibration or None, rates, binary)
        self._outputs: list[dict[str, torch.Tensor]] = []
        #: The last test split's predictions, labels and meta, gathered (for reports).
        self.test_results: dict[str, dict[str, np.ndarray]] | None = None
        self.test_details: dict[str, Any] = {}
        #: The last validation epoch's metrics (`val/...`; not the sanity check's), saved in checkpoints.
        self.val_metrics: dict[str, float] = {}
        #: Set by `recolab.train`: saved in checkpoints so `recolab evaluate` can rebuild the run.
        self.run_info: dict[str, Any] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain strings and tensors only: checkpoints load with torch.load(weights_only=True).
        info = dict(self.run_info)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            info["data_state"] = datamodule.state_dict()
        # The validation that chose this checkpoint (ModelCheckpoint saves after it): plain floats.
        info["val_metrics"] = dict(self.val_metrics)
        checkpoint["recolab"] = info

    def setup(self, stage: str) -> None:
        """Fit the heads that estimate something from the training split (e.g. D2Q's groups)."""
        if stage != "fit" or not len(self.heads):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        train = getattr(datamodule, "data", {}).get("train") if datamodule is not None else None
        if train is None:
            raise ValueError(
                "module.heads need the training split's columns: use a recolab.data RankDataModule"
            )
        for name, head in self.heads.items():
            head.fit(train["labels"][name], train["meta"])

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(features)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """On CPU the columnar batch is already where it trains: returned as is (Lightning's
        generic walk over the nested dict costs a share of a CPU step for nothing). Elsewhere
        Lightning moves it (non-blocking from pinned memory, `data.pin_memory`)."""
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _loss(
        self,
        outputs: dict[str, torch.Tensor],
        labels: dict[str, torch.Tensor],
        meta: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_task = {}
        for t in self.schema.tasks:
            if t.name in self.heads:
                per_task[t.name] = self.heads[t.name].loss(outputs[t.name], labels[t.name], meta)
            else:
                per_task[t.name] = task_loss(t, outputs[t.name], labels[t.name])
        total = sum(t.weight * per_task[t.name] for t in self.schema.tasks)
        return total, per_task

    def _predict(
        self, task: Task, output: torch.Tensor, meta: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        if task.name in self.heads:
            return self.heads[task.name].predict(output, meta)
        return to_prediction(task, output)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        outputs = self(batch["features"])
        loss, per_task = self._loss(outputs, batch["labels"], batch.get("meta", {}))
        check_finite_loss(self, loss, {f"train/loss/{k}": v for k, v in per_task.items()})
        if self._logs_this_step():
            n = batch_rows(batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=n)
            for name, value in per_task.items():
                self.log(f"train/loss/{name}", value, batch_size=n)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the logger records this training step (every `trainer.log_every_n_steps`):
        the training losses are logged only then (the progress bar shows the latest). Lightning
        would not record them on the other steps, and each `self.log` call costs time in every
        step."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or bool(connector.should_update_logs)

    def on_train_start(self) -> None:
        """Before the first step: a model with batch normalization cannot train on a batch of one
        row (torch fails there, mid-epoch); say so now, with the sizes that make that batch."""
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            return
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if getattr(dataset, "smallest_batch", None) == 1:
            raise ValueError(
                f"the training split ({dataset.shard_rows} rows on this process) ends in a batch of "
                f"one row at data.batch_size={dataset.batch_size}, and the model's batch "
                "normalization (model.input_batch_norm / model.batch_norm) needs at least two: "
                "choose another data.batch_size"
            )

    def on_train_epoch_start(self) -> None:
        # Reshuffle the columnar batches (they are not driven by a sampler, see data.columnar).
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    # -- evaluation: accumulate, gather, compute ---------------------------------------------

    def _collect(self, batch: Batch) -> None:
        # Scored in float32 even under `trainer.precision=bf16-mixed`, whose autocast Lightning
        # also applies to evaluation steps: its bf16 outputs keep 8 significant bits, so nearby
        # scores would tie and the ranking metrics (AUC, GAUC, XAUC) would measure the rounding.
        # Training's speed option leaves the evaluated model its float32 weights, scored exactly.
        with torch.autocast(self.device.type, enabled=False):
            outputs = self(batch["features"])
        row = {f"out/{k}": v.detach().float() for k, v in outputs.items()}
        row.update({f"label/{k}": v for k, v in batch["labels"].items()})
        row.update({f"meta/{k}": v for k, v in batch["meta"].items()})
        self._outputs.append(row)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def _gathered(self) -> dict[str, torch.Tensor]:
        rows, self._outputs = self._outputs, []
        return gather_columns(rows, self.device)

    def _evaluate(self, split: str, *, full: bool) -> dict[str, np.ndarray]:
        rows = self._gathered()
        if not rows:
            return {}
        outputs = {t.name: rows[f"out/{t.name}"] for t in self.schema.tasks}
        labels = {t.name: rows[f"label/{t.name}"] for t in self.schema.tasks}
        meta_t = {k[5:]: v for k, v in rows.items() if k.startswith("meta/")}
        with torch.no_grad():
            loss, per_task = self._loss(outputs, labels, meta_t)
            raw = {
                t.name: self._predict(t, outputs[t.name], meta_t).cpu().numpy()
                for t in self.schema.tasks
            }
        values = {f"{split}/loss": float(loss)} | {
            f"{split}/loss/{k}": float(v) for k, v in per_task.items()
        }
        y = {k: v.cpu().numpy() for k, v in labels.items()}
        meta = {k: v.cpu().numpy() for k, v in meta_t.items()}
        groups = meta.get(self.group_key)

        preds = dict(raw)
        if split == "val" and not self.trainer.sanity_checking:
            self.calibration.fit(raw, y)
        calibrated = (
            [t for t in self.calibration.tasks if self.calibration.applies_to(t)]
            if split == "test"
            else []
        )
        for t in calibrated:
            preds[t] = self.calibration(t, raw[t])

        # Validation and test alike: the grouped metrics too, wherever the group key is a meta column.
        found, details = rank_metrics(self.schema, preds, y, groups, full=True, device=self.device)
        values |= {f"{split}/{k}": v for k, v in found.items()}
        if calibrated:
            raw_schema = Schema(tasks=tuple(self.schema.task(t) for t in calibrated))
            found_raw, _ = rank_metrics(raw_schema, raw, y, None, full=False, device=self.device)
            for key, value in found_raw.items():
                metric, task = key.split("/")
                values[f"{split}/{metric}_raw/{task}"] = value
        if full and self.truth:
            with torch.no_grad():
                for t, column in self.truth.items():
                    if t in self.heads:
                        score = self.heads[t].debiased(outputs[t], meta_t).cpu().numpy()
                    else:
                        score = raw[t]
                    truth = meta[column].astype(np.float64)
                    values[f"{split}/truth_xauc/{t}"] = (
                        ExactMetrics(self.device).xauc(truth, score)
                        if np.ptp(truth) > 0
                        else float("nan")
                    )
                    if groups is not None:
                        g = ExactMetrics(self.device).xgauc_details(truth, score, groups)
                        values[f"{split}/truth_xgauc/{t}"] = g.value
        if full and self.schema.oracle:
            oracle_schema = Schema(
                tasks=tuple(t for t in self.schema.tasks if t.name in self.schema.oracle)
            )
            oracle_preds = {t: meta[col] for t, col in self.schema.oracle.items()}
            found, _ = rank_metrics(
                oracle_schema, oracle_preds, y, groups, full=True, device=self.device
            )
            values |= {f"oracle/{k}": v for k, v in found.items()}
        log_gathered(self, values)  # every rank holds the same gathered rows
        if full:
            self.test_details = details
        return {
            "preds": preds,
            "raw_preds": {t: raw[t] for t in calibrated},
            "labels": y,
            "meta": meta,
            "metrics": values,
        }

    def logged_metric_names(self, split: str) -> list[str]:
        """The metric names this module logs for `split` ("train", "val" or "test"; the test
        epoch's `oracle/...` included), as `_evaluate` builds them for this schema.

        `recolab.run_checks` checks a checkpoint's or early stopping's `monitor` and the
        `optimized_metric` against them before training starts.
        """
        tasks = self.schema.tasks
        names = [f"{split}/loss", *(f"{split}/loss/{t.name}" for t in tasks)]
        if split == "train":
            return names
        full = split == "test"
        grouped = self.group_key in self.schema.meta

        def per_task(prefix: str, chosen: tuple[Task, ...], *, groups: bool) -> list[str]:
            out = []
            for t in chosen:
                kind = ["auc", "logloss", "ece"] if t.kind == "binary" else ["mae", "rmse", "xauc"]
                kind += (["gauc"] if t.kind == "binary" else ["xgauc"]) if groups else []
                out += [f"{prefix}/{m}/{t.name}" for m in kind]
            return out

        names += per_task(split, tasks, groups=grouped)
        if not full:
            return names
        calibrated = [
            t
            for t in self.calibration.tasks
            if self.calibration.factory is not None or t in self.calibration.rates
        ]
        names += [f"test/{m}_raw/{t}" for t in calibrated for m in ("auc", "logloss", "ece")]
        for t in self.truth:
            names += [f"test/truth_xauc/{t}"] + ([f"test/truth_xgauc/{t}"] if grouped else [])
        oracle = tuple(t for t in tasks if t.name in self.schema.oracle)
        return names + per_task("oracle", oracle, groups=grouped)

    def on_validation_epoch_end(self) -> None:
        found = self._evaluate("val", full=False)
        if not self.trainer.sanity_checking:
            self.val_metrics = dict(found.get("metrics", {}))

    def on_test_epoch_end(self) -> None:
        self.test_results = self._evaluate("test", full=True)

    # -- reporting (rank zero, after testing) -------------------------------------------------

    def write_report(
        self, out_dir, *, title: str, metrics: dict[str, float], context: dict[str, Any]
    ) -> list:
        """The offline report files for the last test run (see `recolab.reports.rank_report`)."""
        paths = write_rank_report(
            out_dir,
            title=title,
            schema=self.schema,
            metrics=metrics,
            details=self.test_details,
            context=context,
            results=self.test_results,
            heads={name: head.summary() for name, head in self.heads.items()},
            calibration={
                "rates": dict(self.calibration.rates),
                "calibrators": {t: c.kind for t, c in self.calibration.calibrators.items()},
            },
            group_key=self.group_key,
            bootstrap_samples=self.report_bootstrap,
        )
        if self.calibration.calibrators:
            # Beside the report (and logged with it): the fitted calibrators, readable by
            # `recolab.calibration.load_json`. The checkpoint holds the same state.
            paths.append(
                C.save_json(self.calibration.calibrators, Path(out_dir) / "calibration.json")
            )
        return paths

    def metrics_markdown(self, metrics: dict[str, float]) -> str:
        return to_markdown(metric_table(metrics, self.schema))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        sparse = [n for n, m in self.named_modules() if isinstance(m, nn.Embedding) and m.sparse]
        if sparse and self.optimizer_name == "adam":
            raise ValueError(
                f"embeddings {sparse} have sparse gradients, which Adam does not take: set module.optimizer=adagrad"
            )
        cls = OPTIMIZERS[self.optimizer_name]
        kwargs = dict(lr=self.lr, weight_decay=self.weight_decay, **self.optimizer_kwargs)
        if self.optimizer_name == "adam" and not FUSED_OFF & kwargs.keys():
            # Fused Adam (one kernel per parameter for the whole update) is the default where the
            # build has it for these parameters' device; the update is Adam's either way
            # (experiments/bench/speed.md). `module.optimizer_kwargs={fused: false}` turns it off.
            try:
                return cls(self.parameters(), fused=True, **kwargs)
            except (RuntimeError, ValueError) as e:
                log.info("fused Adam unavailable here (%s); using torch's default Adam", e)
        return cls(self.parameters(), **kwargs)
