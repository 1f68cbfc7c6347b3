"""MLflow tracking: where runs go, a fast reachability check, a local store created safely, and how
runs look in MLflow's UI (the experiment's view, unique run names, data bookkeeping as a table)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------------------------
# How a run looks in MLflow's UI

#: The experiment tag MLflow's UI (3.x) reads to choose the experiment's view, and the value of
#: its model-training view (runs, metrics, models); without it the UI guesses, and an experiment
#: whose runs log a pyfunc model with an input example opens in the GenAI view (traces, judges).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

#: Where a run's data bookkeeping goes (`log_data_quality`).
DATA_QUALITY_FILE = "data/quality.json"
DATA_QUALITY_TAG = "recolab.data_quality"


def mark_model_training(client: Any, experiment_id: str) -> None:
    """Tag the experiment so MLflow's UI opens it in the model-training view, unless its kind
    was chosen already (in the UI, or by `mlflow.set_experiment_tag`)."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def unique_run_name(base: str, run_id: str) -> str:
    """`<base>-<the run id's first 6 characters>`: runs of one configuration and seed (a sweep's
    trials, a run repeated) get names of their own, each pointing at its run."""
    suffix = f"-{run_id[:6]}"
    return base if base.endswith(suffix) else base + suffix


def name_run(client: Any, run_id: str, base: str) -> str:
    """Give the run its unique name (`unique_run_name`); return it."""
    name = unique_run_name(base, run_id)
    if client.get_run(run_id).info.run_name != name:
        client.update_run(run_id, name=name)
    return name


def log_data_quality(client: Any, run_id: str, quality: dict[str, float]) -> None:
    """The data's bookkeeping (`data/dropped_rows`, `data/oov_rows/<split>/<column>`) as the
    run's table `data/quality.json` (MLflow's table artifact, shown as a table in the run's
    Artifacts tab) and a one-line tag, instead of as metrics that would crowd the run list and
    the compare view."""
    import pandas as pd

    rows = [
        {"count": name.removeprefix("data/"), "rows": int(value)} for name, value in quality.items()
    ]
    client.log_table(run_id, pd.DataFrame(rows, columns=["count", "rows"]), DATA_QUALITY_FILE)
    nonzero = [f"{r['count']} {r['rows']}" for r in rows if r["rows"]]
    summary = ", ".join(nonzero) if nonzero else "no dropped or out-of-vocabulary rows"
    client.set_tag(run_id, DATA_QUALITY_TAG, summary[:5000])


#: recolab's saved view of the experiment's run list in MLflow's UI (3.x): an experiment tag
#: `mlflow.sharedViewState.<id>` holding `{name, createdAt, updatedAt, state}`, where `state` is
#: the run list's state as JSON (its columns, sort, the chart view's filter). It is listed under the run list's
#: *Views* menu and opened by the link `ui_link` prints. The format is the UI's own (not a
#: documented API): a UI that does not read it shows the plain list.
VIEW_ID = "recolab-headline"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
VIEW_NAME = "recolab: headline metrics"
#: The test metrics the view shows as columns (globs, in this order), at most `VIEW_METRICS`.
VIEW_PATTERNS = (
    "test/gauc/*",
    "test/auc/*",
    "test/xgauc/*",
    "test/xauc/*",
    "test/recall*",
    "test/ndcg*",
)
VIEW_METRICS = 12
VIEW_TAGS = ("recolab.exp", "recolab.data", "recolab.seed")


def preset_view(client: Any, experiment_id: str, metrics: Any) -> list[str]:
    """Create or widen recolab's saved view of the run list: the run's headline test metrics
    (`VIEW_PATTERNS`, added to those the view shows already, up to `VIEW_METRICS`), its model, and
    the tags that say what ran; sorted by the first metric, best first. A view of that id that a
    user saved over in the UI (another name) is left alone. Returns the view's metric columns."""
    import fnmatch
    import json
    import time

    tags = client.get_experiment(experiment_id).tags or {}
    now = int(time.time() * 1000)
    shown: list[str] = []
    created = now
    if VIEW_TAG in tags:
        try:
            envelope = json.loads(tags[VIEW_TAG])
            if envelope.get("name") != VIEW_NAME:
                return []
            created = int(envelope.get("createdAt", now))
            columns = json.loads(envelope["state"]).get("selectedColumns", [])
            shown = [c[len("metrics.`") : -1] for c in columns if c.startswith("metrics.`")]
        except (ValueError, KeyError, TypeError):
            shown = []
    names = sorted(metrics)
    for pattern in VIEW_PATTERNS:
        shown += [m for m in names if fnmatch.fnmatchcase(m, pattern) and m not in shown]
    shown = shown[:VIEW_METRICS]
    state = {
        "selectedColumns": [
            "attributes.`Models`",
            *(f"metrics.`{m}`" for m in shown),
            *(f"tags.`{t}`" for t in VIEW_TAGS),
        ],
        **({"orderByKey": f"metrics.`{shown[0]}`", "orderByAsc": False} if shown else {}),
        "chartsSearchFilter": "test/",  # the chart view (compare the runs): test metrics only
    }
    envelope = {
        "name": VIEW_NAME,
        "createdAt": created,
        "updatedAt": now,
        "state": json.dumps(state),
    }
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))
    return shown


def ui_link(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's run list in MLflow's UI, in the model-training view, with recolab's
    saved view: on the tracking server itself, or on `make ui`'s default address."""
    base = (
        tracking_uri.rstrip("/")
        if tracking_uri.startswith(("http://", "https://"))
        else "http://127.0.0.1:5000"
    )
    return (
        f"{base}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_ID}"
    )
