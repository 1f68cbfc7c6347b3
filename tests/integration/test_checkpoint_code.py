"""A checkpoint is data: `recolab evaluate` refuses one whose stored config would run code.

Each crafted checkpoint is a real one (trained here) with its stored config edited the way an
attacker would; the payload would write a file. Every route must raise `CheckpointError` naming
the key and the target, and leave the file unwritten and the data unread.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from recolab.evaluate import evaluate
from recolab.resume import CheckpointError
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train

QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "logger=none",
    "callbacks.progress_bar.refresh_rate=0",
]
EXPS = {"rank": "mmoe", "recall": "two_tower"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> dict[str, Path]:
    """A tiny trained checkpoint of each kind of experiment (rank, recall)."""
    root = tmp_path_factory.mktemp("trained")
    found = {}
    for kind, exp in EXPS.items():
        cfg = compose_train(
            root, [f"+exp={exp}", *TINY_WORLD, *QUICK], data_dir=data_cache, out=exp
        )
        train(cfg)
        found[kind] = next((root / exp / "checkpoints").glob("epoch*.ckpt"))
    return found


def evaluation(tmp: Path, ckpt: Path, *overrides: str, data_dir: Path | None = None) -> Any:
    cfg = compose_train(
        tmp,
        [f"ckpt_path={ckpt}", "logger=none", *overrides],
        config_name="evaluate",
        out="eval",
        data_dir=data_dir,
    )
    return evaluate(cfg)


@pytest.mark.parametrize("kind", sorted(EXPS))
def test_a_checkpoint_recolab_trained_still_evaluates(
    kind: str, checkpoints: dict[str, Path], tmp_path: Path, data_cache: Path
) -> None:
    metrics = evaluation(tmp_path, checkpoints[kind], data_dir=data_cache)
    assert any(k.startswith("test/") for k in metrics)


def path_node(target: Path) -> dict[str, Any]:
    return {"_target_": "pathlib.Path", "_args_": [str(target)]}


def write_text(target: Path) -> dict[str, Any]:
    """`Path(target).write_text(...)`: a `.pth` file in site-packages would run on the next start."""
    return {
        "_target_": "pathlib.Path.write_text",
        "_args_": [path_node(target), "import sys; sys.stderr.write('pwned')\n"],
    }


#: name -> (edit of the stored config given the file the payload writes, the refused key, its value)
ROUTES: dict[str, tuple[Callable[[dict, Path], None], str, str]] = {
    "data._target_ Path.write_text": (
        lambda c, t: c.update(data=write_text(t)),
        "data._target_",
        "pathlib.Path.write_text",
    ),
    "data._target_ builtins.open 'w'": (
        lambda c, t: c.update(data={"_target_": "builtins.open", "file": str(t), "mode": "w"}),
        "data._target_",
        "builtins.open",
    ),
    "a recolab. path that leads to pathlib": (
        lambda c, t: c.update(data={**write_text(t), "_target_": "recolab.evaluate.Path.write_text"}),
        "data._target_",
        "recolab.evaluate.Path.write_text",
    ),
    "nested _target_ inside an allowed node": (
        lambda c, t: c["model"].update(num_experts=write_text(t)),
        "model.num_experts._target_",
        "pathlib.Path.write_text",
    ),
    "_args_ of an allowed node": (
        lambda c, t: c["model"].update(_args_=[write_text(t)]),
        "model._args_[0]._target_",
        "pathlib.Path.write_text",
    ),
    "_partial_ model": (
        lambda c, t: c.update(model={**write_text(t), "_partial_": True}),
        "model._target_",
        "pathlib.Path.write_text",
    ),
    "get_method indirection": (
        lambda c, t: c["module"].update(
            heads={"click": {"_target_": "hydra.utils.get_method", "path": "builtins.exec"}}
        ),
        "module.heads.click.path",
        "builtins.exec",
    ),
    "an interpolation that builds a node": (
        lambda c, t: c.update(model=f"${{oc.create:'{{_target_: builtins.open, file: {t}, mode: w}}'}}"),
        "model",
        "${oc.create:",
    ),
}  # fmt: skip


def crafted(ckpt: Path, edit: Callable[[dict, Path], None], target: Path, out: Path) -> Path:
    """`ckpt` with its stored config edited: a file that loads with `weights_only=True`."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    config = OmegaConf.to_container(OmegaConf.create(state["recolab"]["config"]))
    edit(config, target)
    state["recolab"]["config"] = OmegaConf.to_yaml(OmegaConf.create(config))
    torch.save(state, out)
    return out


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_checkpoint_whose_config_would_run_code_is_refused(
    route: str, checkpoints: dict[str, Path], tmp_path: Path, data_cache: Path
) -> None:
    edit, key, value = ROUTES[route]
    target = tmp_path / "site-packages" / "evil.pth"
    target.parent.mkdir()
    bad = crafted(checkpoints["rank"], edit, target, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as e:
        evaluation(tmp_path, bad, data_dir=data_cache)
    assert str(e.value).startswith(f"ckpt_path={bad}: its stored config would run code")
    assert f"{key}={value}" in re.sub("['\"]", "", str(e.value))
    assert not target.exists(), "the checkpoint's config wrote a file"


def test_the_model_of_a_checkpoint_is_checked_on_the_users_own_data(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    # `data=` is the user's; the checkpoint's model is still the checkpoint's.
    target = tmp_path / "evil.pth"
    bad = crafted(
        checkpoints["rank"],
        lambda c, t: c.update(model=write_text(t)),
        target,
        tmp_path / "bad.ckpt",
    )
    fresh = tmp_path / "data"
    with pytest.raises(CheckpointError, match=r"model\._target_='pathlib\.Path\.write_text'"):
        evaluation(tmp_path, bad, "data=synthetic_video", *TINY_WORLD, data_dir=fresh)
    assert not target.exists(), "the checkpoint's config wrote a file"
    assert not fresh.exists(), "data was generated or read before the checkpoint was checked"


def test_what_evaluate_does_not_build_from_a_checkpoint_is_not_refused(
    checkpoints: dict[str, Path], tmp_path: Path, data_cache: Path
) -> None:
    # A run trained with a callback or a data module of the user's own, evaluated on `data=`:
    # evaluate builds neither from the checkpoint.
    def edit(c: dict, t: Path) -> None:
        c["callbacks"]["seen_rows"] = {"_target_": "tests.integration.seen_rows.SeenRows"}
        c["data"]["_target_"] = "mypackage.data.MyDataModule"

    ckpt = crafted(checkpoints["rank"], edit, tmp_path / "unused", tmp_path / "own.ckpt")
    metrics = evaluation(tmp_path, ckpt, "data=synthetic_video", *TINY_WORLD, data_dir=data_cache)
    assert any(k.startswith("test/") for k in metrics)
