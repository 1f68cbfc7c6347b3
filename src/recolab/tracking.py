"""MLflow tracking: where runs go, a fast reachability check, a local store created safely."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any data is read or training starts."""


def tracking_uri(root_dir: str) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the embedded store `<root_dir>/mlflow.db`."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root_dir).resolve()}/mlflow.db"
    )


def artifact_location(root_dir: str) -> str | None:
    """Local artifacts sit beside the embedded store; a tracking server chooses its own."""
    return (
        None
        if os.environ.get("MLFLOW_TRACKING_URI")
        else str(Path(root_dir).resolve() / "mlartifacts")
    )


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Fail in seconds, with a clear message, if a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(
                        f"MLflow tracking server {uri} answered {response.status} on /health"
                    )
        except (
            urllib.error.HTTPError
        ) as e:  # something answers on that port, but not MLflow's /health
            raise TrackingError(
                f"{uri} answered HTTP {e.code} on /health: is it an MLflow tracking server? Fix "
                "MLFLOW_TRACKING_URI, or unset it to use the local store (mlflow.db in the project folder)."
            ) from e
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({e}). Start it, fix MLFLOW_TRACKING_URI, "
                "or unset it to use the local store (mlflow.db in the project folder)."
            ) from e
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(
                f"MLflow store {uri}: folder {folder} does not exist or is not writable"
            )
        create_store(uri)


def create_store(uri: str) -> None:
    """Open (and on first use create) a local SQLite store, one process at a time.

    MLflow creates the tables of a new store as the first client opens it: two runs started at
    once against a fresh store both created them, and one failed (`table assessments already
    exists`, or an alembic migration error). An flock on `<store>-lock` (beside `mlflow.db`, which
    git ignores as `mlflow.db-*`) serializes the opening; once the tables exist it costs
    milliseconds.
    """
    from mlflow.tracking import MlflowClient

    store = Path(uri[len("sqlite:///") :])
    with open(store.with_name(store.name + "-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def keep_tracking_env() -> Iterator[None]:
    """Undo `mlflow.set_tracking_uri`'s export of MLFLOW_TRACKING_URI when a run ends, so the
    next run in the same process (a Hydra multirun job, a test) resolves its own store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


OmegaConf.register_new_resolver("recolab_tracking_uri", tracking_uri, replace=True)
OmegaConf.register_new_resolver("recolab_artifact_location", artifact_location, replace=True)
