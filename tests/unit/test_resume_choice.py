"""Which checkpoint `ckpt_path=last` resumes, and the check that the data is the run's own
(`recolab.resume`), on checkpoint files written here; tests/integration/test_resume.py resumes
real runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from recolab import resume
from recolab.checkpointing import RUN_FILE, write_atomically, write_run_file
from recolab.resume import CheckpointError, ResumeError


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
    root: Path,
    job: str,
    cfg: DictConfig,
    mtime: int,
    data_state: dict | None = None,
    name: str = "last.ckpt",
) -> Path:
    """A sweep job's checkpoint (a Lightning checkpoint's keys, its config and data state, 80 kB of
    weights) modified at `mtime`, with the job's `run.json` as `RunCheckpoint` writes it."""
    run_dir = root / "logs" / "multiruns" / "2026-01-01_00-00-00" / job
    path = run_dir / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"config": OmegaConf.to_yaml(cfg), "run_id": ""}
    if data_state is not None:
        info["data_state"] = data_state
    state = {"epoch": 0, "global_step": 1, "loops": {}, "callbacks": {}, "optimizer_states": []}
    torch.save({**state, "state_dict": {"w": torch.zeros(20_000)}, "recolab": info}, path)
    write_run_file(run_dir, info["config"], "")
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
        match=r"no checkpoint of experiment 'mmoe' with seed=0 and these settings .*"
        r"0-mmoe-seed0, has other settings \(model\.num_experts: 8 -> 4\)",
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


# -- broken checkpoints, other runs' files, finished runs --------------------------------------


def _truncate(path: Path, size: int) -> None:
    """What a kill during a copy leaves: the file's first `size` bytes, modified later."""
    data = path.read_bytes()
    assert len(data) > size
    path.write_bytes(data[:size])


@pytest.mark.parametrize("size", [0, 65_536], ids=["empty", "64 kB"])
def test_a_broken_last_ckpt_resumes_the_runs_newest_intact_checkpoint(
    tmp_path: Path, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    best = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=1000, name="epoch00.ckpt")
    last = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=2000)
    _truncate(last, size)
    os.utime(last, (2000, 2000))
    with caplog.at_level("WARNING", logger="recolab.resume"):
        assert _resume_last(_cfg(tmp_path)) == best
    reason = "an empty file" if size == 0 else r"truncated, or not written by torch\.save: .+"
    assert re.search(
        rf"ckpt_path={re.escape(str(last))}: not a checkpoint file \({reason}\); "
        rf"resuming from {re.escape(str(best))}, the run's newest intact checkpoint",
        caplog.text,
    ), caplog.text


def test_a_run_without_an_intact_checkpoint_names_each_file(tmp_path: Path) -> None:
    best = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=1000, name="epoch00.ckpt")
    last = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=2000)
    _truncate(last, 0)
    torch.save({"state_dict": {}}, best)  # loads, but is not a checkpoint of a run
    with pytest.raises(
        ResumeError,
        match=r"0-mmoe-seed0, has no intact checkpoint: ckpt_path=.*last\.ckpt: not a checkpoint "
        r"file \(an empty file\); ckpt_path=.*epoch00\.ckpt: not a resumable recolab checkpoint "
        r"\(it has no epoch, global_step, optimizer_states, loops, callbacks, recolab\)\. "
        r"Start a new run",
    ):
        _resume_last(_cfg(tmp_path))


def test_other_runs_broken_files_neither_block_nor_get_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ours = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=1000)
    # Newer jobs of the same sweep: other settings and an empty last.ckpt; an empty run.json
    # with an empty last.ckpt (a job killed as it started); a run.json that is not JSON.
    others = [
        _checkpoint(tmp_path, "1-mmoe-seed0", _cfg(tmp_path, num_experts=8), mtime=2000),
        _checkpoint(tmp_path, "2-mmoe-seed0", _cfg(tmp_path), mtime=3000),
        _checkpoint(tmp_path, "3-mmoe-seed0", _cfg(tmp_path), mtime=4000),
    ]
    for path in others:
        _truncate(path, 0)
    (others[1].parent.parent / RUN_FILE).write_text("")
    (others[2].parent.parent / RUN_FILE).write_text("{config: [")
    with _opened() as opened, caplog.at_level("DEBUG", logger="recolab.resume"):
        assert _resume_last(_cfg(tmp_path)) == ours
    assert not {str(p) for p in others} & opened  # matched by run.json, never unpickled
    assert "2-mmoe-seed0: unreadable run.json" in caplog.text
    assert "3-mmoe-seed0: unreadable run.json" in caplog.text


def test_last_of_a_finished_run_points_to_evaluate(tmp_path: Path) -> None:
    best = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=1000, name="epoch01.ckpt")
    _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=2000)
    report = best.parent.parent / "report" / "metrics.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"metrics": {}, "context": {"checkpoint": str(best)}}))
    with pytest.raises(
        ResumeError,
        match=rf"0-mmoe-seed0, is finished \(its report is {re.escape(str(report))}\): resuming it "
        rf"would only test it again\. Evaluate it \(on any data\) with `python -m recolab "
        rf"evaluate ckpt_path={re.escape(str(best))}`, or start a new run \(ckpt_path=null",
    ):
        _resume_last(_cfg(tmp_path))


def test_a_broken_file_named_by_ckpt_path_names_the_runs_intact_one(tmp_path: Path) -> None:
    best = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=1000, name="epoch00.ckpt")
    last = _checkpoint(tmp_path, "0-mmoe-seed0", _cfg(tmp_path), mtime=2000)
    _truncate(last, 65_536)
    cfg = _cfg(tmp_path)
    cfg.ckpt_path = str(last)
    with pytest.raises(
        CheckpointError,
        match=rf"last\.ckpt: not a checkpoint file \(.*\); the run's newest intact checkpoint is "
        rf"{re.escape(str(best))}: resume it with ckpt_path=",
    ):
        resume.prepare(cfg)


def test_an_interrupted_atomic_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"the previous checkpoint")

    def killed(f) -> None:
        f.write(b"half of the next")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, killed)
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    write_atomically(path, lambda f: f.write(b"the next checkpoint"))
    assert path.read_bytes() == b"the next checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


_OPENED: set[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, os.PathLike)):
        _OPENED.add(os.fspath(args[0]))


sys.addaudithook(_audit)  # once per process (a hook cannot be removed); records only inside _opened


@contextlib.contextmanager
def _opened() -> Iterator[set[str]]:
    """The paths of the files opened inside the block."""
    global _OPENED
    _OPENED = set()
    try:
        yield _OPENED
    finally:
        _OPENED = None
