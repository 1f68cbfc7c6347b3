"""`python -m recolab compare`: a side-by-side table of tracked runs (markdown and HTML).

    python -m recolab compare                                   # every complete run of experiment `recolab`
    python -m recolab compare "filter=params.\`model.num_experts\` = '8'"
    python -m recolab compare run_ids=[<id>,<id>] metrics=[test/auc/*]
    python -m recolab compare exps=[mmoe,shared_bottom] out_dir=experiments/my_table

The same runs compare in MLflow UI: select them in the experiment's table and press Compare; the
metric names (`test/auc/click`, ...) and tags (`recolab.exp`, `recolab.seed`, ...) are the same.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from recolab import tracking
from recolab.reports.compare import RunRecord, comparison_table, write_comparison
from recolab.stacks import dump_stacks_on_signal
from recolab.train import CONFIG_DIR

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
    return [
        RunRecord(r.info.run_id, r.info.run_name, dict(r.data.params), dict(r.data.metrics))
        for r in found
    ]


def compare(cfg: DictConfig) -> list:
    tracking.check_reachable(cfg.tracking_uri)
    runs = fetch_runs(cfg)
    table = comparison_table(
        runs, metric_patterns=list(cfg.metrics), seed_keys=tuple(cfg.seed_keys)
    )
    source = f"{cfg.tracking_uri}, experiment {cfg.experiment_name!r}" + (
        f", filter {cfg.filter}" if cfg.filter else ""
    )
    paths = write_comparison(table, cfg.out_dir, title=cfg.title, source=source)
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
