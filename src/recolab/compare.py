"""`python -m recolab compare`: tracked runs side by side, with intervals and significance.

    python -m recolab compare                                   # every complete run of experiment `recolab`
    python -m recolab compare "filter=params.\`model.num_experts\` = '8'"
    python -m recolab compare run_ids=[<id>,<id>] metrics=[test/auc/*]
    python -m recolab compare exps=[mmoe,shared_bottom] baseline=shared_bottom
    python -m recolab compare baseline=model.num_experts:4 out_dir=experiments/my_table

Writes `comparison.md`, `comparison.html` and `comparison.json` (`recolab.reports.compare`): one
row per configuration, its headline metrics first (`test/*`, then `val/*` where asked), then the
config keys that differ, the oracle's metrics last; per configuration and metric, mean, std, n
seeds and a 95% t interval over seeds (throughputs, `epoch_means`, as each run's mean over its
epochs); with `baseline=`,
each configuration's difference from it, its 95% interval, p-value and Holm's p, over seeds and,
from the runs' `report/per_user.parquet` artifacts, over test users (paired bootstrap).

The same runs compare in MLflow UI: select them in the experiment's table and press Compare; the
metric names (`test/auc/click`, ...) and tags (`recolab.exp`, `recolab.seed`, ...) are the same.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import hydra
import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from recolab import tracking
from recolab.compose import CONFIG_DIR
from recolab.reports import per_user as PU
from recolab.reports.compare import (
    PerUserLoader,
    RunRecord,
    comparison_records,
    comparison_table,
    write_comparison,
)
from recolab.stacks import dump_stacks_on_signal

log = logging.getLogger(__name__)


def _names(value: Any) -> list[str]:
    """`exps=mmoe` as `exps=[mmoe]`: a single name is a list of one (not one per letter)."""
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def fetch_runs(cfg: DictConfig) -> list[RunRecord]:
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    run_ids, exps = _names(cfg.run_ids), _names(cfg.exps)
    if run_ids:
        found = [client.get_run(r) for r in run_ids]
    else:
        experiment = client.get_experiment_by_name(cfg.experiment_name)
        if experiment is None:
            raise ValueError(
                f"experiment_name={cfg.experiment_name!r}: no such MLflow experiment at {cfg.tracking_uri}"
            )
        clauses = ["attributes.status = 'FINISHED'", "tags.`recolab.complete` = 'true'"]
        if cfg.kind:
            clauses.append(f"tags.`recolab.kind` = '{cfg.kind}'")
        if cfg.filter:
            clauses.append(cfg.filter)
        # MLflow's filter has no OR and no IN for tags: one search per experiment name.
        per_exp = [[f"tags.`recolab.exp` = '{e}'"] for e in exps] or [[]]
        found = [
            run
            for extra in per_exp
            for run in client.search_runs(
                [experiment.experiment_id], " and ".join(clauses + extra), max_results=cfg.max_runs
            )
        ]
    averaged = _names(cfg.get("epoch_means"))
    return [
        RunRecord(
            r.info.run_id,
            r.info.run_name,
            dict(r.data.params),
            dict(r.data.metrics) | epoch_means(client, r.info.run_id, r.data.metrics, averaged),
            start_time=int(r.info.start_time or 0),
            tags=dict(r.data.tags),
        )
        for r in found
    ]


def epoch_means(
    client: MlflowClient, run_id: str, metrics: dict[str, float], names: list[str]
) -> dict[str, float]:
    """Each of `names` the run logged, as the mean over its history (one value per epoch: a
    throughput's last epoch alone is noisy); a step logged twice (a resumed run) counts once, the
    newest value."""
    out = {}
    for name in names:
        if name not in metrics:
            continue
        by_step = {}
        for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp):
            by_step[m.step] = m.value
        if by_step:
            out[name] = float(sum(by_step.values()) / len(by_step))
    return out


def per_user_loader(tracking_uri: str, folder: Path) -> PerUserLoader:
    """Reads a run's `report/per_user.parquet` through MLflow's artifact API (once per run)."""
    cache: dict[str, Any] = {}

    def load(run_id: str) -> Any:
        if run_id not in cache:
            path = f"report/{PU.FILE}"
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=path,
                    dst_path=str(folder / run_id),
                    tracking_uri=tracking_uri,
                )
                cache[run_id] = PU.read_per_user(local)
            except (OSError, mlflow.exceptions.MlflowException) as e:
                log.warning("run %s has no readable %s (%s): seeds-only tests", run_id, path, e)
                cache[run_id] = None
        return cache[run_id]

    return load


def compare(cfg: DictConfig) -> list:
    tracking.check_reachable(cfg.tracking_uri)
    runs = fetch_runs(cfg)
    patterns, seed_keys = list(cfg.metrics), tuple(cfg.seed_keys)
    table = comparison_table(runs, metric_patterns=patterns, seed_keys=seed_keys)
    with tempfile.TemporaryDirectory(prefix="recolab-compare-") as folder:
        records, notes = comparison_records(
            runs,
            metric_patterns=patterns,
            seed_keys=seed_keys,
            baseline=cfg.baseline,
            load_per_user=per_user_loader(cfg.tracking_uri, Path(folder)) if cfg.baseline else None,
            samples=int(cfg.bootstrap_samples),
            seed=int(cfg.bootstrap_seed),
        )
    notes += [
        f"{m}: each run's mean over its epochs (its MLflow history), not its last epoch's value"
        for m in _names(cfg.get("epoch_means"))
        if m in table.columns
    ]
    source = f"{cfg.tracking_uri}, experiment {cfg.experiment_name!r}" + (
        f", filter {cfg.filter}" if cfg.filter else ""
    )
    settings = {
        "baseline_selector": cfg.baseline,
        "bootstrap_samples": int(cfg.bootstrap_samples),
        "bootstrap_seed": int(cfg.bootstrap_seed),
        "runs": [r.run_id for r in runs],
    }
    paths = write_comparison(
        table,
        cfg.out_dir,
        title=cfg.title,
        source=source,
        records=records,
        notes=notes,
        settings=settings,
    )
    print((paths[0]).read_text())
    print("written:", *map(str, paths))
    return paths


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    log.debug(OmegaConf.to_yaml(cfg))
    compare(cfg)


if __name__ == "__main__":
    dump_stacks_on_signal()
    main()
