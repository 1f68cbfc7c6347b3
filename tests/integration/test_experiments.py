"""Every experiment config composes and trains for a few steps on tiny data, tracked in a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from recolab.train import train
from tests.conftest import CONFIGS, TINY_WORLD, compose_train, shared_data

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "exp").glob("*.yaml"))
QUICK = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2"]
SMALL = ["data.max_rows=3000", "data.batch_size=256", "data.eval_batch_size=1024"]

#: Per data config: the real data set it needs from ../shared/data (or None), and the overrides
#: that make it tiny. A new data config must be registered here, so that its experiments are tested.
TINY_BY_DATA: dict[str, tuple[str | None, list[str]]] = {
    "synthetic_video": (None, TINY_WORLD),
    "synthetic_video_purchase": (None, TINY_WORLD),
    "synthetic_video_streaming": (None, TINY_WORLD),
    "synthetic_retrieval": (None, TINY_WORLD),
    "census": ("census-income-kdd", SMALL),
    "open_bandit": ("open-bandit-dataset-small", SMALL),
    "kuairand": ("kuairand-27k-likehate-subset", SMALL),
    "movielens": ("ml-latest-small", ["data.batch_size=256"]),
    "mmoe_synthetic": (None, ["data.num_rows=2000", "data.dim=10", "data.batch_size=256"]),
}


def data_choice(exp: str, tmp: Path) -> str:
    cfg = compose_train(tmp, [f"+exp={exp}"])
    return cfg.hydra.runtime.choices.data


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for all experiments (creating a store's tables takes seconds)."""
    return tmp_path_factory.mktemp("store")


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiment_trains_and_is_tracked(exp: str, store: Path, data_cache: Path) -> None:
    data = data_choice(exp, store)
    assert data in TINY_BY_DATA, (
        f"configs/exp/{exp}.yaml uses data={data}: register its tiny overrides in TINY_BY_DATA"
    )
    needs, tiny = TINY_BY_DATA[data]
    if needs:
        shared_data(needs)
    cfg = compose_train(
        store,
        [f"+exp={exp}", *tiny, *QUICK, f"experiment_name=test-{exp}"],
        data_dir=data_cache,
        out=exp,
    )
    metrics = train(cfg)
    assert metrics, "no test metrics"

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(f"test-{exp}").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["recolab.exp"] == exp and run.data.tags["recolab.complete"] == "true"
    assert run.data.params["seed"] == "0"
    assert any(k.startswith("model.") for k in run.data.params)
    for key, value in metrics.items():
        assert run.data.metrics[key] == pytest.approx(value, nan_ok=True)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/metrics.json"} <= artifacts
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(None)
