"""Resuming a run: what `ckpt_path=last` means, and how a resumed run ends where an unbroken one would.

**Which checkpoint.** `ckpt_path=last` resumes the newest run of this project with the same
settings, from its newest intact checkpoint:

- *which runs*: the run folders `<paths.log_dir>/runs/<exp_name>/*/` and
  `<paths.log_dir>/multiruns/*/*/` that hold `run.json` (the resolved config and MLflow run id,
  written when fitting starts, `recolab.checkpointing`) and at least one `checkpoints/*.ckpt`,
  newest checkpoint first. A run matches when its `run.json` has this experiment, this seed and
  every other setting of this invocation (`setting_differences`): the jobs of one sweep share
  their experiment and seed, so a newer sibling job's run is not this job's. Only `run.json`
  files are read to choose (no checkpoint of another run is opened), and one that cannot be read
  is skipped (logged at debug level); a folder without `run.json` (written by recolab before
  `run.json` existed) is resumed by naming its file.
- *a finished run is not resumed*: when the newest match has written its report
  (`report/metrics.json`: it was trained and tested), resuming would only test it again, so
  `ResumeError` points to `recolab evaluate ckpt_path=<its best checkpoint>` and to a new run
  (ckpt_path=null).
- *which file*: `last.ckpt`, which holds the newest checkpoint of the run (the last finished
  epoch, or a later step checkpoint where `every_n_train_steps` is set), else the run's other
  checkpoints, newest first. Each is verified before it is chosen: it loads with
  `weights_only=True` and holds Lightning's state (`EXPECTED_KEYS`) and the `recolab` entry with
  the run's config. A broken one (empty or truncated by a kill during a copy, say) is logged as a
  warning naming it and the file used instead; a run without an intact checkpoint fails with
  `ResumeError` naming each file and what is wrong with it.

`ckpt_path=<file>` names one directly; it is verified the same way, and a broken file fails with
`CheckpointError`, naming the run's newest intact checkpoint where there is one.

**From MLflow, on another machine.** A training run logs its best and last checkpoints to its
MLflow run as they are written (`checkpoints/best.ckpt`, `checkpoints/last.ckpt`, the best's own
file name in the tag `recolab.best_checkpoint`; `recolab.run_logger.RunLogger`). `ckpt_path=<run
id>` (or `runs:/<run id>/checkpoints/last.ckpt`) downloads them from the tracking store into this
invocation's new run folder (`fetch_for_resume`), with the best under its own name, and points
the checkpoint's `ModelCheckpoint` state at that folder (`relocate`: otherwise Lightning forgets
the best score and tests whatever the next epoch wrote), so a project copy that never saw the
run's `outputs/` continues it in the same MLflow run. The download is then verified like any
file. Settings derived from the run's folders (`callbacks.model_checkpoint.dirpath`,
`data.cache_dir`, ...) compare by their place under `paths.*` (`setting_differences`), and where
the run is tracked may differ (`logger.mlflow.tracking_uri`: the run must be in that store). A
run that finished (`recolab.complete=true`) is not resumed: evaluate it with `python -m recolab
evaluate run_id=<id>`. Checkpoint files
are written beside their name and renamed into place (`recolab.checkpointing`), so a kill leaves
the previous file whole; the verification covers files written otherwise (by an older recolab,
or copied).

**The same run.** Resuming continues the checkpoint's run: the new invocation writes into that
run's folder (`paths.output_dir`, so its checkpoints and report land beside the first ones) and
logs into its MLflow run (`checkpoint["recolab"]["run_id"]`, through `MLFlowLogger(run_id=...)`),
which goes back to RUNNING and is tagged `recolab.resumed_from=<checkpoint>`. Its params describe
the run as it was started, so `ckpt_path` keeps the value that run had. Every other setting must
be the one the run had (a different setting is a different experiment, and MLflow would refuse
to change a logged param): `check_same_settings` names each difference before any data is read.

**The same result.** Lightning restores the weights, the optimizer, the loop counters and the
callbacks (best checkpoint, early stopping). Two more things decide what a run does after step
k, and both are restored too:

- the rest of the epoch's batches: the training loader is resumable
  (`recolab.data.resumable.ResumableLoader`): a checkpoint records the epoch and how many batches
  of it were consumed, and the resumed loader skips those in the same seeded permutation;
- the random state (dropout masks): `RNGState` saves torch's generator states in each checkpoint
  and sets them back on resume (loaders draw from their own generators, so nothing else moves the
  global one between the checkpoint and the next step).

The data must be the run's too: after the data is read, `check_same_data` compares the
vocabularies and dense-feature statistics fitted on it with those the checkpoint saved, and
names the first column that differs (a source file changed since the run started) before any
training step.

So a run killed mid-epoch and resumed ends with the same test metrics, bit for bit, as one that
ran through (`tests/integration/test_resume.py`), on one CPU process. The streaming data module
resumes exactly too, with loader workers or without (`recolab.data.resumable.StreamLoader`: a
checkpoint holds each worker's reader position, shuffle buffer and generator state after the
batches training took; `tests/integration/test_streaming_resume.py`); a mid-epoch checkpoint
without that position (an older recolab's) is refused unless `resume_inexact=true`, and such a
run is tagged `recolab.resume_exact=false`. Not covered: the in-memory loader with worker
processes (the sampler runs ahead of training), and a GPU's non-deterministic kernels.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from recolab.checkpointing import RUN_FILE, read_run_file, write_atomically

log = logging.getLogger(__name__)

#: Settings that may differ between a run and its resumption. (`artifact_location` resolves to null
#: once MLflow has set MLFLOW_TRACKING_URI in the process, as `mlflow.set_tracking_uri` does; it only
#: matters when an experiment is created. `tracking_uri`: the store the run continues in, which must
#: hold the run, `check_run_exists`; a run resumed on another machine reaches its server by another
#: address, or the same store from another folder.)
MAY_DIFFER = (
    "ckpt_path",
    "resume_inexact",
    "paths.",
    "hydra.",
    "logger.mlflow.run_id",
    "logger.mlflow.artifact_location",
    "logger.mlflow.tracking_uri",
    "log_model",
    "register_as",
    "log_checkpoints",
)

#: Where a training run's checkpoints go in its MLflow run (`recolab.run_logger.RunLogger`).
ARTIFACT_DIR = "checkpoints"
BEST, LAST = "best.ckpt", "last.ckpt"
#: The MLflow tag holding the file name of the run's best checkpoint (`epochNN.ckpt`).
BEST_TAG = "recolab.best_checkpoint"
MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")


class ResumeError(ValueError):
    """The checkpoint to resume cannot be found or does not belong to this configuration."""


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # removed meanwhile (a running job replaced its best checkpoint)
        return -1


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The checkpoints of a run folder, newest first (`last.ckpt` first of those written together)."""
    files = [(p, _mtime_ns(p)) for p in (run_dir / "checkpoints").glob("*.ckpt")]
    ordered = sorted(
        ((p, t) for p, t in files if t >= 0),
        key=lambda pt: (pt[1], pt[0].name == "last.ckpt"),
        reverse=True,
    )
    return [p for p, _ in ordered]


def run_folders(cfg: DictConfig) -> list[Path]:
    """Folders of this project's runs and sweep jobs with a `run.json` and a checkpoint, newest
    checkpoint first."""
    log_dir = Path(cfg.paths.log_dir)
    found = [
        *log_dir.glob(f"runs/{cfg.exp_name}/*/{RUN_FILE}"),
        *log_dir.glob(f"multiruns/*/*/{RUN_FILE}"),
    ]
    newest = {f.parent: max(map(_mtime_ns, checkpoint_files(f.parent)), default=-1) for f in found}
    return sorted((d for d, t in newest.items() if t >= 0), key=newest.__getitem__, reverse=True)


class CheckpointError(ValueError):
    """A file that `torch.load(weights_only=True)` refuses: not a checkpoint, or one holding code."""


def load_weights_only(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`: tensors and plain data only, so loading runs no code.

    A refused file raises `CheckpointError` with torch's reason (not its advice to retry with
    `weights_only=False`, which would run whatever the file holds).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:]]
        reason = next(
            (
                ln
                for ln in lines
                if ln
                and not ln.startswith(
                    ("Please file", "Check the documentation", "WeightsUnpickler error")
                )
            ),
            "",
        )
        raise CheckpointError(
            f"ckpt_path={path}: refused by torch.load(weights_only=True) ({reason or 'unreadable'}): a recolab "
            "checkpoint holds only tensors and plain data, so this file is not one, or it holds objects that "
            "would run code when loaded"
        ) from e
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError) as e:  # not a zip or pickle file, or a truncated one
        first = (str(e).splitlines() or [type(e).__name__])[0]
        empty = Path(path).stat().st_size == 0
        reason = "an empty file" if empty else f"truncated, or not written by torch.save: {first}"
        raise CheckpointError(f"ckpt_path={path}: not a checkpoint file ({reason})") from e


def read_info(path: Path) -> dict[str, Any]:
    """The checkpoint's `recolab` entry (config, run id), read with `weights_only=True` and memory-mapped."""
    return dict(load_weights_only(path, mmap=True).get("recolab") or {})


#: What every checkpoint a recolab run writes holds (Lightning's state and recolab's entry).
EXPECTED_KEYS = (
    "epoch",
    "global_step",
    "state_dict",
    "optimizer_states",
    "loops",
    "callbacks",
    "recolab",
)


def verified_info(path: Path) -> dict[str, Any]:
    """The `recolab` entry of a checkpoint that can be resumed: it loads with `weights_only=True`
    and holds `EXPECTED_KEYS` and the run's config; `CheckpointError` says what is wrong otherwise."""
    ckpt = load_weights_only(path, mmap=True)
    missing = [k for k in EXPECTED_KEYS if k not in ckpt]
    if not missing and not (isinstance(ckpt["recolab"], dict) and ckpt["recolab"].get("config")):
        missing = ["recolab.config"]
    if missing:
        raise CheckpointError(
            f"ckpt_path={path}: not a resumable recolab checkpoint (it has no {', '.join(missing)})"
        )
    return dict(ckpt["recolab"])


def newest_intact(
    run_dir: Path, *, skip: Path | None = None
) -> tuple[tuple[Path, dict[str, Any]] | None, list[str]]:
    """The run folder's newest checkpoint that passes `verified_info` (other than `skip`) with its
    `recolab` entry, or None; and what is wrong with each newer one."""
    broken: list[str] = []
    for path in checkpoint_files(run_dir):
        if path == skip:
            continue
        try:
            return (path, verified_info(path)), broken
        except (CheckpointError, FileNotFoundError) as e:
            broken.append(str(e))
    return None, broken


def finished_report(run_dir: Path) -> Path | None:
    """The run's `report/metrics.json`: written after the run was trained and tested."""
    path = run_dir / "report" / "metrics.json"
    return path if path.is_file() else None


def best_checkpoint(run_dir: Path, report: Path) -> Path | None:
    """The checkpoint a finished run tested (its report's `context.checkpoint`), else its newest
    checkpoint other than `last.ckpt`."""
    try:
        tested = Path(str(json.loads(report.read_text())["context"]["checkpoint"]))
    except (OSError, ValueError, KeyError, TypeError):
        tested = None
    if tested is not None and tested.is_file():
        return tested
    return next((p for p in checkpoint_files(run_dir) if p.name != "last.ckpt"), None)


def _run_settings(run_dir: Path) -> DictConfig | None:
    """The config in a run folder's `run.json`; None (logged at debug level) where unreadable."""
    try:
        return OmegaConf.create(read_run_file(run_dir)["config"])
    except Exception as e:  # another run's file: never a reason to fail this one
        log.debug("ckpt_path=last: skipping %s: unreadable %s (%s)", run_dir, RUN_FILE, e)
        return None


def find_last(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """The newest intact checkpoint of the newest unfinished run with this experiment, seed and
    every other setting (see the module docstring). Where the experiment and seed have runs but
    none with these settings, the error names how the newest of them differs."""
    closest: tuple[Path, list[str]] | None = None
    for run_dir in run_folders(cfg):
        stored = _run_settings(run_dir)
        if (
            stored is None
            or stored.get("exp_name") != cfg.exp_name
            or stored.get("seed") != cfg.seed
        ):
            continue
        diffs = setting_differences(stored, _in_folder_of(cfg, run_dir))
        if diffs:
            closest = closest or (run_dir, diffs)
            continue
        if (report := finished_report(run_dir)) is not None:
            best = best_checkpoint(run_dir, report) or "<its checkpoint>"
            raise ResumeError(
                f"ckpt_path=last: the newest run of experiment {cfg.exp_name!r} with seed={cfg.seed} "
                f"and these settings, {run_dir}, is finished (its report is {report}): resuming it "
                f"would only test it again. Evaluate it (on any data) with `python -m recolab evaluate "
                f"ckpt_path={best}`, or start a new run (ckpt_path=null, the default)"
            )
        found, broken = newest_intact(run_dir)
        if found is None:
            raise ResumeError(
                f"ckpt_path=last: the newest run of experiment {cfg.exp_name!r} with seed={cfg.seed} "
                f"and these settings, {run_dir}, has no intact checkpoint: {'; '.join(broken)}. "
                "Start a new run (ckpt_path=null, the default)"
            )
        for reason in broken:
            log.warning(
                "%s; resuming from %s, the run's newest intact checkpoint", reason, found[0]
            )
        return found
    where = (
        f"{Path(cfg.paths.log_dir)}/runs/{cfg.exp_name}/*/ or "
        f"{Path(cfg.paths.log_dir)}/multiruns/*/*/"
    )
    if closest is not None:
        run_dir, diffs = closest
        raise ResumeError(
            f"ckpt_path=last: no checkpoint of experiment {cfg.exp_name!r} with seed={cfg.seed} and "
            f"these settings under {where}; the newest of that experiment and seed, {run_dir}, "
            f"has other settings ({_shown(diffs)}). Resume with the run's own settings, "
            "name a checkpoint file (ckpt_path=<file>), or start a new run (ckpt_path=null)"
        )
    raise ResumeError(
        f"ckpt_path=last: no checkpoint of experiment {cfg.exp_name!r} with seed={cfg.seed} under "
        f"{where} (run folders with {RUN_FILE} and checkpoints/*.ckpt); start a new run "
        "(ckpt_path=null) or name a checkpoint file (ckpt_path=<file>)"
    )


def verified_file(path: Path) -> dict[str, Any]:
    """`verified_info` of a checkpoint named by `ckpt_path=<file>`; the error of a broken one
    names the run's newest intact checkpoint, where there is one."""
    try:
        return verified_info(path)
    except CheckpointError as e:
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        intact = newest_intact(run_dir, skip=path)[0] if run_dir is not None else None
        if intact is None:
            raise
        raise CheckpointError(
            f"{e}; the run's newest intact checkpoint is {intact[0]}: resume it with "
            f"ckpt_path={intact[0]}"
        ) from e


def _in_folder_of(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """`cfg` writing into the run folder `run_dir`, as a resumed run does: settings derived from
    the folder (the checkpoint directory, Lightning's root directory) then compare equal to the
    run's."""
    moved = copy.deepcopy(cfg)
    with open_dict(moved):
        moved.paths.output_dir = str(run_dir)
    return moved


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: node}


def setting_differences(stored: DictConfig, cfg: DictConfig) -> list[str]:
    """Every setting (resolved) that differs between a stored run's config and `cfg`, as
    `key: old -> new`, except those that may differ on resume (`MAY_DIFFER`)."""

    def flat(c: DictConfig) -> dict[str, Any]:
        keys = [k for k in c if k != "hydra"]
        container = OmegaConf.to_container(OmegaConf.masked_copy(c, keys), resolve=True)
        folders = _folders(container.get("paths"))
        items = _flat(container)
        return {
            k: _under_folders(v, folders) for k, v in items.items() if not k.startswith(MAY_DIFFER)
        }

    old, new = flat(stored), flat(cfg)
    missing = object()
    return [
        f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k, missing) != new.get(k, missing)
    ]


def _folders(paths: Any) -> list[tuple[str, str]]:
    """The config's folders (`paths.*`), deepest first, with the name a value under them reads as."""
    if not isinstance(paths, dict):
        return []
    found = [
        (str(v).rstrip("/"), f"${{paths.{k}}}") for k, v in paths.items() if isinstance(v, str)
    ]
    return sorted((f for f in found if len(f[0]) > 1), key=lambda f: len(f[0]), reverse=True)


def _under_folders(value: Any, folders: list[tuple[str, str]]) -> Any:
    """A path setting by its place under the config's folders (`/a/outputs/x` ->
    `${paths.log_dir}/x`): a run resumed in another project copy has other folders."""
    if isinstance(value, str):
        for folder, name in folders:
            if value == folder or value.startswith(folder + "/"):
                return name + value[len(folder) :]
    return value


def rebased(node: Any, stored_paths: Any, paths: Any) -> tuple[Any, list[str]]:
    """`node` (a stored config's node, as a container) with every value under one of the stored
    config's folders (`paths.*` of the run) moved under this invocation's same folder, and what
    was moved (`key: old -> new`): a run evaluated in another copy of the project reads its data
    where this copy keeps it (`data.cache_dir`: `<root>/data/synthetic`)."""
    here = {name: folder for folder, name in _folders(paths)}
    folders = [(old, name, here[name]) for old, name in _folders(stored_paths) if name in here]
    moved: list[str] = []

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            for old, _, new in folders:
                if old != new and (value == old or value.startswith(old + "/")):
                    moved.append(f"{key}: {value} -> {new + value[len(old) :]}")
                    return new + value[len(old) :]
        return value

    return walk(node, ""), moved


def _shown(diffs: list[str]) -> str:
    return "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")


def check_same_settings(stored: DictConfig, cfg: DictConfig, path: Path) -> None:
    """Raise `ResumeError` naming every setting (resolved) that differs from the stored run's."""
    diffs = setting_differences(stored, cfg)
    if diffs:
        raise ResumeError(
            f"ckpt_path: {path} belongs to a run with other settings ({_shown(diffs)}). Resume with the run's "
            "own settings, or start a new run (ckpt_path=null)"
        )


def _as_array(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _describe(value: Any) -> str:
    a = _as_array(value)
    return f"{a.size:,} values" if a.size > 4 else repr(a.tolist())  # statistics: the numbers


def check_same_data(path: Path, state: dict[str, Any]) -> None:
    """Raise `ResumeError` if the data read now is not the data the checkpoint's run trained on.

    `state` is the data module's `state_dict()` after its setup (the vocabularies and the
    dense-feature statistics fitted on the training split); the checkpoint saved the run's own
    (`recolab.data_state`). A checkpoint without them (written by another program) is not checked.
    """
    stored = read_info(path).get("data_state")
    if stored is None:
        return
    old, new = _flat(stored), _flat(state)
    for key in sorted(old.keys() | new.keys()):
        if key not in old or key not in new:
            found = (
                "in the run's data but not in the data read now"
                if key in old
                else "in the data read now but not in the run's"
            )
            raise ResumeError(
                f"ckpt_path: {path}: the data is not what the run trained on: {key} is {found}. "
                "Resume on the run's own data, or start a new run (ckpt_path=null)"
            )
        a, b = _as_array(old[key]), _as_array(new[key])
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ResumeError(
                f"ckpt_path: {path}: the data is not what the run trained on: {key} was "
                f"{_describe(old[key])} in the run, {_describe(new[key])} now (the source changed "
                "since the run started). Resume on the run's own data, or start a new run "
                "(ckpt_path=null)"
            )


def prepare(cfg: DictConfig) -> Path | None:
    """Resolve `cfg.ckpt_path` and point `cfg` at the run being resumed; return the checkpoint to fit
    from, or None for a fresh run. Reads no data; fails with `ResumeError` before any is read."""
    requested = cfg.get("ckpt_path")
    if requested in (None, ""):
        return None
    if requested == "last":
        path, info = find_last(cfg)
    elif (reference := mlflow_reference(requested)) is not None:
        path = fetch_for_resume(cfg, *reference, requested=str(requested))
        info = verified_file(path)
    else:
        path = Path(str(requested)).expanduser().resolve()
        if not path.is_file():
            raise ResumeError(
                f"ckpt_path={requested}: no such checkpoint file (nor an MLflow run id or "
                "runs:/<run id>/checkpoints/<file>)"
            )
        info = verified_file(path)
    stored = None
    if info.get("config"):
        # A run trained before a config key moved resumes under today's keys.
        from recolab.checkpoint_config import upgrade_stored_config

        plain = OmegaConf.to_container(OmegaConf.create(info["config"]))
        stored = OmegaConf.create(upgrade_stored_config(plain, where=str(path)))
    run_id = info.get("run_id") or None
    with open_dict(cfg):
        if path.parent.name == "checkpoints":
            cfg.paths.output_dir = str(path.parent.parent)
        if stored is not None:
            check_same_settings(stored, cfg, path)
        cfg.ckpt_path = stored.get("ckpt_path") if stored is not None else None
        if run_id and cfg.get("logger") and "mlflow" in cfg.logger:
            check_run_exists(cfg.logger.mlflow.tracking_uri, run_id, path)
            cfg.logger.mlflow.run_id = run_id
    log.info(
        "resuming from %s (folder %s, MLflow run %s)", path, cfg.paths.output_dir, run_id or "none"
    )
    return path


def mlflow_reference(value: Any) -> tuple[str, str] | None:
    """`(run id, artifact path)` for `runs:/<run id>/<path>` or a bare MLflow run id (path ""),
    None for anything else (a file: a file of that name wins over a run id)."""
    text = str(value)
    if text.startswith("runs:/"):
        run_id, _, path = text[len("runs:/") :].strip("/").partition("/")
        return run_id, path
    if MLFLOW_RUN_ID.fullmatch(text) and not Path(text).exists():
        return text, ""
    return None


def tracking_uri_of(cfg: DictConfig) -> str:
    """The store this invocation tracks into: its MLflow logger's, else `MLFLOW_TRACKING_URI` or
    the project's local store (`recolab.tracking.tracking_uri`)."""
    if cfg.get("logger") and "mlflow" in cfg.logger:
        return str(cfg.logger.mlflow.tracking_uri)
    from recolab.tracking import tracking_uri

    return tracking_uri(cfg.paths.root_dir)


def _run(tracking_uri: str, run_id: str, requested: str) -> Any:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException as e:
        raise FileNotFoundError(
            f"{requested}: MLflow run {run_id} is not in {tracking_uri} ({e.error_code}); point "
            "MLFLOW_TRACKING_URI at the store it was logged to"
        ) from e


def fetch_checkpoint(
    run_id: str, artifact: str, tracking_uri: str, into: Path, *, requested: str
) -> Path:
    """Download the artifact `artifact` (a checkpoint) of MLflow run `run_id` into the folder
    `into`, under its own file name; `FileNotFoundError` names what is missing."""
    import mlflow
    from mlflow.tracking import MlflowClient

    _run(tracking_uri, run_id, requested)
    parent = str(Path(artifact).parent) if "/" in artifact else None
    listed = MlflowClient(tracking_uri=tracking_uri).list_artifacts(run_id, parent)
    if artifact not in {a.path for a in listed}:
        held = (
            MlflowClient(tracking_uri=tracking_uri).list_artifacts(run_id, ARTIFACT_DIR)
            if parent != ARTIFACT_DIR
            else listed
        )
        names = ", ".join(sorted(a.path for a in held)) or "none"
        raise FileNotFoundError(
            f"{requested}: MLflow run {run_id} has no artifact {artifact} (its {ARTIFACT_DIR}/: "
            f"{names}). A run trained before recolab logged checkpoints, or with "
            "log_checkpoints=false, has none: give the checkpoint file instead (ckpt_path=<file>)"
        )
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=into) as tmp:
        got = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=tmp, tracking_uri=tracking_uri
        )
        target = into / Path(artifact).name
        os.replace(got, target)  # whole files only under the final name
    return target


def fetch_for_resume(cfg: DictConfig, run_id: str, artifact: str, *, requested: str) -> Path:
    """The checkpoint `ckpt_path=<run id>|runs:/...` names (the run's `last.ckpt` by default),
    downloaded into this invocation's run folder with the run's best checkpoint beside it, and
    its `ModelCheckpoint` state pointed at that folder (see the module docstring)."""
    uri = tracking_uri_of(cfg)
    run = _run(uri, run_id, requested)
    if run.data.tags.get("recolab.complete") == "true":
        raise ResumeError(
            f"ckpt_path={requested}: MLflow run {run_id} is finished (its report is logged): "
            f"resuming it would only test it again. Evaluate it (on any data) with `python -m "
            f"recolab evaluate run_id={run_id}`, or start a new run (ckpt_path=null, the default)"
        )
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    path = fetch_checkpoint(
        run_id, artifact or f"{ARTIFACT_DIR}/{LAST}", uri, folder, requested=requested
    )
    best = run.data.tags.get(BEST_TAG)
    if best and Path(artifact).name != BEST and Path(best).name == best:
        kept = fetch_checkpoint(run_id, f"{ARTIFACT_DIR}/{BEST}", uri, folder, requested=requested)
        if kept.name != best:
            os.replace(kept, folder / best)
    relocate(path, folder)
    log.info("downloaded %s of MLflow run %s into %s", path.name, run_id, folder)
    return path


def relocate(path: Path, folder: Path) -> None:
    """Point the `ModelCheckpoint` state saved in checkpoint `path` at `folder`: its `dirpath` and
    the files it names there (best, k-th best, last), so that Lightning restores the best score
    and best file of a run copied from another folder (it restores them only when `dirpath` is
    its own). The checkpoint is read with `weights_only=True` and written back in place."""
    ckpt = load_weights_only(path)
    new = os.path.realpath(folder)  # as ModelCheckpoint resolves its dirpath
    changed = False
    for state in (ckpt.get("callbacks") or {}).values():
        if not isinstance(state, dict) or not isinstance(state.get("dirpath"), str):
            continue
        old = Path(state["dirpath"])

        def moved(p: Any, old: Path = old) -> Any:
            return (
                str(Path(new) / Path(p).name)
                if isinstance(p, str) and p and Path(p).parent == old
                else p
            )

        state["dirpath"] = new
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = moved(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
        changed = True
    if changed:
        write_atomically(path, lambda f: torch.save(ckpt, f))


def check_run_exists(tracking_uri: str, run_id: str, path: Path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException as e:
        raise ResumeError(
            f"ckpt_path: {path} belongs to MLflow run {run_id}, which is not in {tracking_uri} "
            f"({e.error_code}); point MLFLOW_TRACKING_URI at the store it was logged to"
        ) from e


def inexact_consent(cfg: DictConfig) -> bool:
    """Whether this invocation lets a stream resume without its position (`resume_inexact=true`).

    The consent is the invocation's, not a setting of the run: it is taken out of `cfg`, so the
    run's params keep false, and the MLflow tag `recolab.resume_exact` says what happened.
    """
    allow = bool(cfg.get("resume_inexact"))
    if allow:
        cfg.resume_inexact = False
    return allow


def check_data(path: Path, datamodule: Any, *, allow_inexact: bool) -> None:
    """The resumed run's own data (`check_same_data`), and a stream's position: it resumes where
    it stopped, or refuses (the data module's `check_resume`); a clear error before any step."""
    check_same_data(path, datamodule.state_dict())
    if hasattr(datamodule, "check_resume"):
        datamodule.check_resume(path, allow_inexact=allow_inexact)


def mark_resumed(mlf: Any, checkpoint: Path | None, datamodule: Any = None) -> None:
    """Tag the continued MLflow run with the checkpoint it resumed from and whether it resumed
    exactly (`recolab.resume_exact`, the data module's `resume_exact`), and set it RUNNING again."""
    if mlf is None or checkpoint is None:
        return
    mlf.experiment.update_run(mlf.run_id, status="RUNNING")
    mlf.experiment.set_tag(mlf.run_id, "recolab.resumed_from", str(checkpoint))
    exact = str(getattr(datamodule, "resume_exact", True)).lower()
    mlf.experiment.set_tag(mlf.run_id, "recolab.resume_exact", exact)


class RNGState(pl.Callback):
    """Saves torch's random generator states in every checkpoint; sets them back when one is resumed.

    Plain tensors, so checkpoints still load with `weights_only=True`.
    """

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(state_dict["cuda"]))
