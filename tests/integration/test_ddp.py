"""DDP on CPU with two real processes (gloo): one tracked run, one set of checkpoints, and test
metrics computed on rows gathered from both ranks, equal to a single process's on the same rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recolab.evaluate import evaluate
from tests.conftest import compose_train
from tests.integration.test_cli import run_cli

# 6010 impressions -> a 601-row test split: the two ranks hold 301 and 300 rows.
DDP_WORLD = [
    "data.num_users=300",
    "data.num_items=200",
    "data.num_impressions=6010",
    "data.batch_size=256",
    "data.eval_batch_size=1",
]
# Evaluation batches of one row: each row's forward pass is then the same computation in every
# process layout, so predictions agree bit for bit and the metrics must agree to rounding.


def test_ddp_two_processes_gather_exact_metrics(tmp_path: Path) -> None:
    r = run_cli(
        [
            "train",
            "+exp=mmoe",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.max_epochs=2",
            *DDP_WORLD,
        ],
        tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    # The metrics are computed on rows gathered from both ranks: no "use sync_dist" advice.
    assert "sync_dist=True" not in r.stderr, r.stderr[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("recolab").experiment_id])
    assert len(runs) == 1, "the run must be recorded once, by rank zero"
    run = runs[0]
    assert run.info.status == "FINISHED"
    # Both ranks' samples and FLOPs, once per epoch (recolab.throughput): their ratio, FLOPs per
    # sample, is the same in both epochs (same batch sizes).
    speed = [
        client.get_metric_history(run.info.run_id, f"train/{k}_per_sec")
        for k in ("samples", "flops")
    ]
    assert [len(h) for h in speed] == [2, 2]
    ratios = [f.value / s.value for s, f in zip(*speed)]
    assert ratios[0] > 0 and ratios[1] == pytest.approx(ratios[0], rel=1e-9)
    run_dirs = list((tmp_path / "outputs" / "runs" / "mmoe").iterdir())
    assert len(run_dirs) == 1
    ckpts = sorted(p.name for p in (run_dirs[0] / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len(ckpts) == 2, ckpts  # best + last, written once

    best = next(p for p in (run_dirs[0] / "checkpoints").glob("epoch*.ckpt"))
    cfg = compose_train(
        tmp_path, [f"ckpt_path={best}", "logger=none"], config_name="evaluate", out="single"
    )
    single = evaluate(cfg)
    ddp = {k: v for k, v in run.data.metrics.items() if k.startswith(("test/", "oracle/"))}
    assert set(single) <= set(ddp)  # (ddp also holds the throughput monitor's test/*_per_sec)
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-6, abs=1e-7, nan_ok=True), key

    # `recolab evaluate` of the same checkpoint on two processes: the same metrics, one linked
    # evaluation run, and one report, written by rank zero with the run's id.
    r = run_cli(
        ["evaluate", f"ckpt_path={best}", "trainer=ddp", "trainer.devices=2"], tmp_path, timeout=300
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("| click | auc |") == 1, "the table is printed once"
    evaluations = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id], "tags.`recolab.kind` = 'evaluate'"
    )
    assert len(evaluations) == 1
    evaluated = evaluations[0]
    assert evaluated.data.tags["mlflow.parentRunId"] == run.info.run_id
    for key, value in single.items():
        assert evaluated.data.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    reports = [
        p for p in (tmp_path / "outputs").rglob("report.md") if p.parent.parent not in run_dirs
    ]
    assert len(reports) == 1, reports
    assert f"`{evaluated.info.run_id}`" in reports[0].read_text()
