"""The run lifecycle's small parts (`recolab.lifecycle`, `recolab.run_logger`): how a lost tracking
server is told from an answer (`unless_lost`, the one place every MLflow call that may outlive
its server goes through), the loggers' tags (`build_loggers`: a training run's, an evaluation's
linked to its training run) and the end of a run (`tracked`: FINISHED, FAILED, KILLED)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import RestException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from recolab import lifecycle, tracking
from recolab.run_logger import RunLogger, is_lost, unless_lost

GONE = "http://127.0.0.1:9"  # nothing answers there; nothing in these tests connects to it


def test_a_lost_server_is_noted_and_the_block_left() -> None:
    lg = RunLogger(experiment_name="e", tracking_uri=GONE)
    assert not is_lost(lg)
    with unless_lost(lg, "saving the view"):
        raise ConnectionRefusedError(111, "Connection refused")
    assert is_lost(lg) and lg.lost == "at saving the view: [Errno 111] Connection refused"
    assert is_lost(None)  # untracked: nothing to send to


def test_an_answer_of_the_server_or_another_loggers_failure_raises() -> None:
    lg = RunLogger(experiment_name="e", tracking_uri=GONE)
    with pytest.raises(RestException), unless_lost(lg, "here"):
        raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"})
    plain = MLFlowLogger(experiment_name="e", tracking_uri=GONE)
    with pytest.raises(ConnectionRefusedError), unless_lost(plain, "here"):
        raise ConnectionRefusedError(111, "Connection refused")
    assert lg.lost is None


def test_confirm_raises_what_a_server_that_still_answers_gave(monkeypatch) -> None:
    lg = RunLogger(experiment_name="e", tracking_uri=GONE)
    monkeypatch.setattr(tracking, "check_reachable", lambda uri: None)  # it answers
    with pytest.raises(OSError, match="disk full"), unless_lost(lg, "model", confirm=True):
        raise OSError("disk full")
    assert lg.lost is None

    def gone(uri: str) -> None:
        raise tracking.TrackingError("not reachable")

    monkeypatch.setattr(tracking, "check_reachable", gone)
    with unless_lost(lg, "logging the model", confirm=True):
        raise OSError("[Errno 104] Connection reset by peer")
    assert lg.lost == "at logging the model: [Errno 104] Connection reset by peer"


class Recorder:
    """A logger config's target that records what it was built with."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


def _cfg(tmp_path: Path, tags: dict[str, Any] | None) -> Any:
    node: dict[str, Any] = {"_target_": f"{__name__}.Recorder", "name": "x"}
    if tags is not None:
        node["tags"] = tags
    return OmegaConf.create({"logger": {"mlflow": node}, "paths": {"output_dir": str(tmp_path)}})


def _set(tags: dict[str, Any]) -> dict[str, Any]:
    """The tags with a value (Hydra merges the tags given into the node's, whose nulls stay)."""
    return {k: v for k, v in tags.items() if v is not None}


def test_a_training_runs_logger_tags_are_strings(tmp_path: Path) -> None:
    (built,) = lifecycle.build_loggers(_cfg(tmp_path, {"recolab.seed": 3, "recolab.data": None}))
    assert built.kwargs["name"] == "x" and _set(built.kwargs["tags"]) == {"recolab.seed": "3"}
    (plain,) = lifecycle.build_loggers(_cfg(tmp_path, None))
    assert plain.kwargs == {"name": "x"}  # no tags given: none passed


def test_an_evaluation_takes_its_training_runs_model_and_data_and_links_to_it(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    trained = client.create_run(
        experiment, tags={"recolab.model": "mmoe", "recolab.data": "synthetic", "other": "no"}
    ).info.run_id
    cfg = _cfg(tmp_path, {"recolab.data": "census", "recolab.model": None})
    cfg.logger.mlflow.tracking_uri = uri
    (built,) = lifecycle.build_loggers(cfg, trained_by=trained)
    # The evaluation's own `data=` wins over the training run's; links come last.
    assert _set(built.kwargs["tags"]) == {
        "recolab.model": "mmoe",
        "recolab.data": "census",
        "mlflow.parentRunId": trained,
        "recolab.train_run": trained,
    }
    # A training run in another store: linked, without its tags.
    cfg.logger.mlflow.tracking_uri = f"sqlite:///{tmp_path}/other.db"
    (elsewhere,) = lifecycle.build_loggers(cfg, trained_by="0" * 32)
    assert _set(elsewhere.kwargs["tags"]) == {
        "recolab.data": "census",
        "mlflow.parentRunId": "0" * 32,
        "recolab.train_run": "0" * 32,
    }


class FakeTrainer:
    is_global_zero = True
    checkpoint_callback = None
    callback_metrics: dict[str, float] = {}


@pytest.mark.parametrize(
    "raised, status, exit_code",
    [(RuntimeError("boom"), "FAILED", None), (SIGTERMException(), "KILLED", 143)],
)
def test_a_run_that_raised_is_failed_and_one_stopped_by_sigterm_killed(
    tmp_path: Path, monkeypatch, capsys, raised: BaseException, status: str, exit_code: Any
) -> None:
    ended: list[str] = []
    monkeypatch.setattr(lifecycle, "fail_run", lambda mlf, status="FAILED": ended.append(status))
    lifecycle.claim_run_dir(tmp_path, resuming=False)
    cfg = _cfg(tmp_path, None)
    with pytest.raises(SystemExit if exit_code else RuntimeError) as e:
        with lifecycle.tracked(cfg, FakeTrainer(), [], kind="train", datamodule=object()):
            raise raised
    assert ended == [status]
    if exit_code:
        assert e.value.code == exit_code
        assert (
            "recolab: killed by SIGTERM; no checkpoint was written yet" in capsys.readouterr().err
        )
    assert tmp_path.resolve() not in lifecycle._held  # the folder is released
