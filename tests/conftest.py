"""Shared fixtures: composing the real configs on tiny data, with tracking in a temporary store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"

#: A world small enough to train on in seconds.
TINY_WORLD = [
    "data.num_users=300",
    "data.num_items=200",
    "data.num_impressions=6000",
    "data.batch_size=256",
    "data.eval_batch_size=1024",
]


def compose_train(
    tmp: Path,
    overrides: list[str],
    *,
    data_dir: Path | None = None,
    config_name: str = "train",
    out: str = "out",
) -> DictConfig:
    """The config as `python -m recolab <config_name> <overrides>` would see it, rooted in `tmp`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp)
        cfg.paths.output_dir = str(tmp / out)
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
    (tmp / out).mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of generated worlds for the whole session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def _no_outside_tracking(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests track into their own temporary stores unless a test points elsewhere; a store one
    test set as MLflow's process-wide tracking URI does not leak into the next test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield
    mlflow.set_tracking_uri(None)


def shared_data(name: str) -> Path:
    """A real data set from ../shared/data, or skip with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data set {path} is absent (a fresh clone has no ../shared)")
    return path
