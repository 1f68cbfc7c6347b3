"""Which checkpoint `ckpt_path=last` resumes, and the check that the data is the run's own
(`recolab.resume`), on checkpoint files written here; tests/integration/test_resume.py resumes
real runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from recolab import resume
from recolab.resume import ResumeError


def _cfg(root: Path, *, num_experts: int = 4, seed: int = 0) -> DictConfig:
    return OmegaConf.create(
        {
            "exp_name": "mmoe",
            "seed": seed,
            "ckpt_path": None,
            "paths": {"log_dir": str(root / "logs"), "output_dir": str(root / "new")},
            "model": {"num_experts": num_experts},
        }
    )


def _checkpoint(
    root: Path, job: str, cfg: DictConfig, mtime: int, data_state: dict | None = None
) -> Path:
    """A sweep job's `last.ckpt` holding its config (and data state), modified at `mtime`."""
    path = root / "logs" / "multiruns" / "2026-01-01_00-00-00" / job / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    info = {"config": OmegaConf.to_yaml(cfg), "run_id": ""}
    if data_state is not None:
        info["data_state"] = data_state
    torch.save({"recolab": info}, path)
    os.utime(path, (mtime, mtime))
    return path


def _resume_last(cfg: DictConfig) -> Path | None:
    with_last = cfg.copy()
    with_last.ckpt_path = "last"
    return resume.prepare(with_last)


def test_last_is_this_jobs_checkpoint_when_a_sibling_sweep_job_is_newer(tmp_path: Path) -> None:
    # `train -m model.num_experts=4,8 ... ckpt_path=last`: both jobs share experiment and seed.
    four = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path, num_experts=4), mtime=1000)
    eight = _checkpoint(tmp_path, "1-mmoe-seed0", _cfg(tmp_path, num_experts=8), mtime=2000)
    assert _resume_last(_cfg(tmp_path, num_experts=4)) == four
    assert _resume_last(_cfg(tmp_path, num_experts=8)) == eight
    # Of two checkpoints with the same settings, the newer.
    newer = _checkpoint(tmp_path, "2-mmoe-seed0", _cfg(tmp_path, num_experts=4), mtime=3000)
    assert _resume_last(_cfg(tmp_path, num_experts=4)) == newer


def test_last_without_a_checkpoint_of_these_settings_names_the_difference(tmp_path: Path) -> None:
    _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path, num_experts=8), mtime=1000)
    _checkpoint(tmp_path, "1-mmoe-seed1", _cfg(tmp_path, num_experts=4, seed=1), mtime=2000)
    with pytest.raises(
        ResumeError,
        match=r"no last\.ckpt of experiment 'mmoe' with seed=0 and these settings .*"
        r"0-mmoe-seed0.* other settings \(model\.num_experts: 8 -> 4\)",
    ):
        _resume_last(_cfg(tmp_path, num_experts=4))


STATE = {
    "vocabs": {"user_id": torch.arange(1, 301), "city": ["a", "b"]},
    "dense_stats": {"age": [30.5, 4.0]},
}


def test_the_same_data_passes(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, "0", _cfg(tmp_path), mtime=1000, data_state=STATE)
    same = {
        "vocabs": {"user_id": torch.arange(1, 301), "city": ["a", "b"]},
        "dense_stats": {"age": [30.5, 4.0]},
    }
    resume.check_same_data(path, same)
    # A checkpoint written without the data state (another program) is not checked.
    resume.check_same_data(_checkpoint(tmp_path, "1", _cfg(tmp_path), mtime=1000), {})


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s["vocabs"].update(user_id=torch.arange(1, 311)),
            r"vocabs\.user_id was 300 values in the run, 310 values now",
        ),
        (
            lambda s: s["vocabs"].update(user_id=torch.arange(2, 302)),
            r"vocabs\.user_id was 300 values in the run, 300 values now",
        ),
        (
            lambda s: s["vocabs"].update(city=["a", "c"]),
            r"vocabs\.city was \['a', 'b'\] in the run, \['a', 'c'\] now",
        ),
        (
            lambda s: s["dense_stats"].update(age=[31.0, 4.0]),
            r"dense_stats\.age was \[30\.5, 4\.0\] in the run, \[31\.0, 4\.0\] now",
        ),
        (
            lambda s: s["vocabs"].pop("city"),
            r"vocabs\.city is in the run's data but not in the data read now",
        ),
        (
            lambda s: s["vocabs"].update(country=["x"]),
            r"vocabs\.country is in the data read now but not in the run's",
        ),
    ],
    ids=["more ids", "other ids", "other strings", "dense stats", "column gone", "new column"],
)
def test_other_data_is_named_before_training(tmp_path: Path, change, message: str) -> None:
    path = _checkpoint(tmp_path, "0", _cfg(tmp_path), mtime=1000, data_state=STATE)
    now = {
        "vocabs": {"user_id": torch.arange(1, 301), "city": ["a", "b"]},
        "dense_stats": {"age": [30.5, 4.0]},
    }
    change(now)
    with pytest.raises(ResumeError, match=rf"the data is not what the run trained on: {message}"):
        resume.check_same_data(path, now)


def test_settings_derived_from_the_run_folder_match_once_resumed_into_it(tmp_path: Path) -> None:
    # A run's stored config holds its checkpoint directory resolved (`<run folder>/checkpoints`);
    # a new invocation starts with another folder, which resuming replaces by the run's.
    def derived(output_dir: Path) -> DictConfig:
        cfg = _cfg(tmp_path)
        cfg.paths.output_dir = str(output_dir)
        cfg.callbacks = {"model_checkpoint": {"dirpath": "${paths.output_dir}/checkpoints"}}
        return cfg

    job = tmp_path / "logs" / "multiruns" / "2026-01-01_00-00-00" / "0-mmoe-seed0"
    stored = OmegaConf.create(OmegaConf.to_container(derived(job), resolve=True))
    path = _checkpoint(tmp_path, "0-mmoe-seed0", stored, mtime=1000)
    assert _resume_last(derived(tmp_path / "new")) == path
