"""The ranking pipeline: a multi-task ranker trained with per-task losses, evaluated on every row.

Validation and test outputs are accumulated per rank, gathered from all ranks at the epoch's end,
and only then turned into metrics (`recolab.pipelines.base.PipelineModule`), so GAUC and XAUC are
exact under DDP (never an average of per-rank values). Metric names follow `split/metric/task`.
The heads that fit on the training split get it from the data module through `TrainingColumns`.

Every validation epoch logs the same per-task metrics as the test epoch (`rank_metrics`): the
declared set of each task kind (`module.metrics`, names of `recolab.metrics.registry`; by default,
`configs/module/rank.yaml`: AUC, logloss, ECE and GAUC per binary task, MAE, RMSE, XAUC and XGAUC
per regression task, GAUC and XGAUC grouped by `group_key`, a `meta` column), on the model's own
predictions (the calibrator is
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import AfterValidator, ConfigDict, with_config
from torch import nn
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from recolab import calibration as C
from recolab.data.columnar import batch_rows
from recolab.data.schema import Schema, Task
from recolab.heads import Head
from recolab.metrics.device import ExactMetrics
from recolab.metrics.registry import METRICS, Metric, metric_names, metric_set
from recolab.params import Count0, NonNegative, Positive, checked
from recolab.pipelines.base import Optimizer, PipelineModule
from recolab.reports.rank_report import metric_table, to_markdown, write_rank_report
from recolab.run_checks import check_finite_loss

log = logging.getLogger(__name__)

Batch = dict[str, dict[str, torch.Tensor]]
#: The metric sets by task kind (`module.metrics`), as registered metrics.
MetricSets = dict[str, tuple[Metric, ...]]


@runtime_checkable
class TrainingColumns(Protocol):
    """What `RankModule` asks of its data module: the training split's label and meta columns,
    `{"labels": {task: (N,)}, "meta": {column: (N,)}}`, or None where the split is not held in
    memory (streaming). Heads that estimate something from the training split (D2Q's duration
    groups) are fitted on them when fitting starts."""

    def training_columns(self) -> Mapping[str, Mapping[str, np.ndarray]] | None: ...


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
    metrics: MetricSets,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    groups: np.ndarray | None,
    *,
    device: torch.device | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The declared metrics of each task (keys `metric/task`) and the grouped ones' details.

    `metrics` holds each task kind's set (`RankModule.metrics`); the grouped metrics (GAUC,
    XGAUC) are computed where `groups` is given, and their `GroupedMetric`s (with the groups left
    out) returned as details. AUC, GAUC, XAUC, XGAUC and logloss are sorted by torch on `device`
    (a GPU) when the rows are many, by numpy otherwise: the same exact values
    (`recolab.metrics.device`).
    """
    out: dict[str, float] = {}
    details: dict[str, Any] = {}
    E = ExactMetrics(device)
    for task in schema.tasks:
        y, p = labels[task.name], preds[task.name]
        for m in metrics[task.kind]:
            if m.grouped and groups is None:
                continue
            key = f"{m.name}/{task.name}"
            value = m.compute(E, y, p, groups)
            if m.grouped:
                details[key], value = value, value.value
            out[key] = value
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


@with_config(ConfigDict(extra="forbid"))
class RankMetricSets(TypedDict, total=False):
    """`module.metrics` of a ranking run: the declared metric set of each task kind, names of
    `recolab.metrics.registry`; a kind left out gets every registered metric of that kind."""

    binary: Annotated[list[str], AfterValidator(metric_names("binary"))]
    regression: Annotated[list[str], AfterValidator(metric_names("regression"))]


class RankModule(PipelineModule):
    """Trains a multi-task ranker; evaluates it on all rows of each evaluation split.

    Args:
        model: a ranker (`recolab.models.rank`): features -> {task: output (B,)}.
        schema: the data's schema (tasks, meta columns, oracle columns).
        lr: the optimizer's learning rate.
        weight_decay: the optimizer's weight decay.
        group_key: meta column that GAUC and XGAUC group by.
        heads: `{task: Head}` (see `recolab.heads`); tasks without one use `task_loss` and
            `to_prediction`.
        calibration: a factory of unfitted calibrators (`recolab.calibration`), or None.
        truth: `{task: meta column}` with the debiased truth (synthetic data), for the truth metrics.
        negative_downsampling: `{task: w}` from the data module: the share of negatives it kept
            in the training split (`recolab.data.datamodule.RankDataModule`).
        optimizer: the torch optimizer factory (`module.optimizer: {_target_: torch.optim.Adam,
            _partial_: true, ...}`; Adagrad also takes sparse embedding gradients), called with
            the parameters, `lr` and `weight_decay`. Adam is fused unless its node chooses an
            implementation (`fused`, `foreach`), where the torch build has fused Adam for the
            parameters' device (experiments/bench/speed.md). None: Adam.
        metrics: the metric set per task kind, `{binary: [...], regression: [...]}`, names of
            `recolab.metrics.registry` (`configs/module/rank.yaml` declares the default); a kind
            left out: every registered metric of that kind.
        report_bootstrap: resamples B of the report's 95% intervals over users (GAUC, XGAUC;
            `recolab.reports.per_user`); 0 for none.
    """

    @checked
    def __init__(
        self,
        model: nn.Module,
        schema: Schema,
        *,
        lr: Positive = 1e-3,
        weight_decay: NonNegative = 0.0,
        group_key: str = "user_id",
        heads: dict[str, Head] | None = None,
        calibration: Callable[[], Any] | None = None,
        truth: dict[str, str] | None = None,
        negative_downsampling: dict[str, float] | None = None,
        optimizer: Optimizer | None = None,
        metrics: RankMetricSets | None = None,
        report_bootstrap: Count0 = 2000,
    ) -> None:
        super().__init__(
            lr=lr, weight_decay=weight_decay, optimizer=optimizer, report_bootstrap=report_bootstrap
        )
        declared = dict(metrics or {})
        #: The declared metric set of each task kind (`module.metrics`).
        self.metrics: MetricSets = {
            kind: metric_set(
                declared.get(kind, [m.name for m in METRICS.values() if m.kind == kind]),
                kind,
                key=f"module.metrics.{kind}",
            )
            for kind in ("binary", "regression")
        }
        self.model = model
        self.schema = schema
        self.group_key = group_key
        heads = dict(heads or {})
        unknown = [k for k in heads if k not in schema.task_names]
        if unknown:
            raise ValueError(
                f"module.heads: no task(s) {unknown}; the data's tasks are {schema.task_names}"
            )
        for name, head in heads.items():
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
        #: The last test split's predictions, labels and meta, gathered (for reports).
        self.test_results: dict[str, dict[str, np.ndarray]] | None = None
        self.test_details: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        """Fit the heads that estimate something from the training split (e.g. D2Q's groups)."""
        if stage != "fit" or not len(self.heads):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        train = datamodule.training_columns() if isinstance(datamodule, TrainingColumns) else None
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
                "normalization (model.embedding.batch_norm / model.batch_norm) needs at least two: "
                "choose another data.batch_size"
            )

    # -- evaluation: collect, gather, compute (`PipelineModule`) -------------------------------

    def collect(self, batch: Batch, *, test: bool) -> dict[str, torch.Tensor]:
        # Scored in float32 even under `trainer.precision=bf16-mixed`, whose autocast Lightning
        # also applies to evaluation steps: its bf16 outputs keep 8 significant bits, so nearby
        # scores would tie and the ranking metrics (AUC, GAUC, XAUC) would measure the rounding.
        # Training's speed option leaves the evaluated model its float32 weights, scored exactly.
        with torch.autocast(self.device.type, enabled=False):
            outputs = self(batch["features"])
        row = {f"out/{k}": v.detach().float() for k, v in outputs.items()}
        row.update({f"label/{k}": v for k, v in batch["labels"].items()})
        row.update({f"meta/{k}": v for k, v in batch["meta"].items()})
        return row

    def compute(self, split: str, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        full = split == "test"
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
        calibrated = self._calibrated() if full else []
        for t in calibrated:
            preds[t] = self.calibration(t, raw[t])

        # Validation and test alike: the grouped metrics too, wherever the group key is a meta column.
        found, details = rank_metrics(
            self.schema, self.metrics, preds, y, groups, device=self.device
        )
        values |= {f"{split}/{k}": v for k, v in found.items()}
        if calibrated:
            raw_schema = Schema(tasks=tuple(self.schema.task(t) for t in calibrated))
            found_raw, _ = rank_metrics(raw_schema, self.metrics, raw, y, None, device=self.device)
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
            oracle_preds = {t: meta[col] for t, col in self.schema.oracle.items()}
            found, _ = rank_metrics(
                self._oracle_schema(), self.metrics, oracle_preds, y, groups, device=self.device
            )
            values |= {f"oracle/{k}": v for k, v in found.items()}
        if full:
            self.test_details = details
            self.test_results = {
                "preds": preds,
                "raw_preds": {t: raw[t] for t in calibrated},
                "labels": y,
                "meta": meta,
                "metrics": values,
            }
        return values

    def _calibrated(self) -> list[str]:
        """The binary tasks whose test predictions the calibration stage changes."""
        return [t for t in self.calibration.tasks if self.calibration.applies_to(t)]

    def _oracle_schema(self) -> Schema:
        return Schema(tasks=tuple(t for t in self.schema.tasks if t.name in self.schema.oracle))

    def logged_metric_names(self, split: str) -> list[str]:
        """The metric names this module logs for `split` ("train", "val" or "test"; the test
        epoch's `oracle/...` included), as `compute` builds them for this schema.

        `recolab.run_checks` checks a checkpoint's or early stopping's `monitor` and the
        `optimized_metric` against them before training starts.
        """
        tasks = self.schema.tasks
        names = [f"{split}/loss", *(f"{split}/loss/{t.name}" for t in tasks)]
        if split == "train":
            return names
        grouped = self.group_key in self.schema.meta

        def per_task(
            prefix: str, chosen: tuple[Task, ...], *, groups: bool, suffix=""
        ) -> list[str]:
            return [
                f"{prefix}/{m.name}{suffix}/{t.name}"
                for t in chosen
                for m in self.metrics[t.kind]
                if groups or not m.grouped
            ]

        names += per_task(split, tasks, groups=grouped)
        if split != "test":
            return names
        calibrated = [
            self.schema.task(t)
            for t in self.calibration.tasks
            if self.calibration.factory is not None or t in self.calibration.rates
        ]
        names += per_task("test", tuple(calibrated), groups=False, suffix="_raw")
        for t in self.truth:
            names += [f"test/truth_xauc/{t}"] + ([f"test/truth_xgauc/{t}"] if grouped else [])
        return names + per_task("oracle", self._oracle_schema().tasks, groups=grouped)

    # -- reporting (`Reporting`: rank zero, after testing) ---------------------------------------

    def write_report(
        self, out_dir: str | Path, *, title: str, metrics: dict[str, float], context: dict[str, Any]
    ) -> list[Path]:
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
