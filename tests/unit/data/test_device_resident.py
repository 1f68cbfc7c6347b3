"""The training split on the device (recolab.data.device), run through its CPU code path: the
switch's rule, the batches (the host path's, row for row, on a CPU), mid-epoch resume, a
Lightning fit; and the streaming module's read-ahead, which must not change a batch."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from recolab.data import device as D
from recolab.data.resumable import ResumableLoader
from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.mmoe import MMoE
from recolab.pipelines.rank import RankModule
from tests.unit.data.test_datamodule import _dm, _write
from tests.unit.data.test_streaming import _attach, _module, _read
from tests.unit.data.test_streaming import _write as _write_folder

GiB = 2**30


@pytest.mark.parametrize(
    "value,parsed",
    [("auto", "auto"), (True, True), (False, False), ("TRUE", True), ("false", False)],
)
def test_setting_parses(value, parsed):
    assert D.parse_setting(value) == parsed


@pytest.mark.parametrize("bad", ["yes", 1, None, "gpu"])
def test_a_bad_setting_names_the_key_and_the_choices(bad):
    with pytest.raises(ValueError, match=r"data\.device_resident must be auto, true or false"):
        D.parse_setting(bad)
    with pytest.raises(
        ValueError, match=r"device_resident=.*: expected one of 'auto' or true or false"
    ):
        _dm("unused.parquet", device_resident=bad)


def test_the_rule():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    # auto: a GPU only, and only while the split takes at most AUTO_FRACTION of the free memory
    assert D.decide("auto", cuda, 10 * GiB, 40 * GiB)
    assert D.decide("auto", cuda, int(D.AUTO_FRACTION * 40 * GiB), 40 * GiB)
    assert not D.decide("auto", cuda, 30 * GiB, 40 * GiB)
    assert not D.decide("auto", cpu, 1, None)
    # true: wherever the trainer trains; a GPU that cannot hold the split fails with both sizes
    assert D.decide(True, cpu, 10**12, None)
    assert D.decide(True, cuda, 30 * GiB, 40 * GiB)
    with pytest.raises(
        ValueError, match=r"takes 50\.00 GiB, more than the 40\.00 GiB free on cuda:0"
    ):
        D.decide(True, cuda, 50 * GiB, 40 * GiB)
    assert not D.decide(False, cuda, 1, 40 * GiB)


def _trainer() -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _batches(loader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[g][k], b[g][k]) for g in a for k in a[g])


def test_the_device_path_on_a_cpu_gives_the_host_paths_batches(tmp_path):
    path = _write(tmp_path, n=300)
    host, dev = _dm(path, device_resident=False), _dm(path, device_resident=True, pin_memory=True)
    for dm in (host, dev):
        dm.setup()
        dm.trainer = _trainer()
    host_loader, dev_loader = host.train_dataloader(), dev.train_dataloader()
    assert host._on_device is None and dev._on_device[0] == torch.device("cpu")
    assert not dev_loader.pin_memory  # nothing to pin: the batches are where they train
    assert dev_loader.dataset.device == torch.device("cpu")
    for epoch in (0, 1):
        a, b = _batches(host_loader, epoch), _batches(dev_loader, epoch)
        assert len(a) == len(b) == 15 and all(_equal(x, y) for x, y in zip(a, b))
    # Made once: a second loader (a second fit) reuses the device's columns.
    columns = dev._on_device[1]
    assert dev.train_dataloader().dataset.columns is columns
    # Evaluation splits stay on the host path.
    assert dev.val_dataloader().dataset.columns is dev.data["val"]


def test_auto_on_a_cpu_is_the_host_path(tmp_path):
    dm = _dm(_write(tmp_path, n=100))
    dm.setup()
    dm.trainer = _trainer()
    dm.train_dataloader()
    assert dm.device_resident == "auto" and dm._on_device is None


def test_the_device_path_resumes_mid_epoch_on_the_batch_it_stopped_at(tmp_path):
    path = _write(tmp_path, n=300)
    dm = _dm(path, device_resident=True)
    dm.setup()
    dm.trainer = _trainer()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    it = iter(loader)
    taken = [next(it) for _ in range(6)]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 6}
    reference = _batches(dm.train_dataloader(), 1)

    resumed_dm = _dm(path, device_resident=True)
    resumed_dm.setup()
    resumed_dm.trainer = _trainer()
    resumed = resumed_dm.train_dataloader()
    assert isinstance(resumed, ResumableLoader)
    resumed.load_state_dict(state)
    rest = _batches(resumed, 1)
    assert len(rest) == len(reference) - 6
    assert all(_equal(x, y) for x, y in zip(taken + rest, reference))


def test_a_lightning_fit_trains_on_the_device_columns(tmp_path):
    dm = _dm(_write(tmp_path, n=300), device_resident=True, meta=["user_id"])
    dm.setup()
    module = RankModule(
        MMoE(
            dm.schema,
            embedding=partial(FeatureEmbedding, embedding_dim=4),
            num_experts=2,
            expert_dims=[8],
            tower_dims=[4],
        ),
        dm.schema,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 * 15
    assert dm._on_device is not None
    assert trainer.train_dataloader.dataset.columns is dm._on_device[1]


def test_streaming_refuses_true_and_keeps_auto_on_the_host(tmp_path: Path):
    _write_folder(tmp_path)
    with pytest.raises(ValueError, match=r"data\.device_resident=true: streamed data"):
        _module(tmp_path, device_resident=True)
    _module(tmp_path, device_resident="auto")


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_read_ahead_yields_the_same_batches(tmp_path: Path, workers):
    _write_folder(tmp_path)
    out = []
    for read_ahead in (False, True):
        dm = _module(tmp_path, num_workers=workers)
        dm.setup()
        _attach(dm, 0, 1, epoch=1)
        loader = dm.train_dataloader()
        assert loader.dataset.read_ahead is False  # on a CPU: no pinning, no read-ahead
        loader.dataset.read_ahead = read_ahead
        out.append(_read(loader))
    assert len(out[0]) == len(out[1]) > 5
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_streaming_reads_ahead_when_it_pins_for_a_gpu(tmp_path: Path):
    _write_folder(tmp_path)
    dm = _module(tmp_path, num_workers=0, pin_memory=True)
    dm.setup()
    _attach(dm, 0, 1)
    assert dm.train_dataloader().dataset.read_ahead is True


def test_read_ahead_reads_each_piece_once_in_order():
    calls = []

    def read(i):
        calls.append(i)
        return {"g": {"x": torch.tensor([i])}}

    from recolab.data.streaming import _ReadAhead

    ahead = _ReadAhead(read, 4)
    got = [int(ahead(i)["g"]["x"]) for i in range(4)]
    assert got == [0, 1, 2, 3] and sorted(calls) == [0, 1, 2, 3]
    assert ahead._pool is None  # the thread ends with the last piece
    out_of_order = _ReadAhead(read, 4)
    assert int(out_of_order(2)["g"]["x"]) == 2  # a resume starts mid-sequence
    assert int(out_of_order(3)["g"]["x"]) == 3


def test_resolve_uses_the_trainers_device():
    columns = {"features": {"x": torch.arange(10)}}
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu")), world_size=2
    )
    assert D.resolve(True, trainer, columns) == torch.device("cpu")
    assert D.resolve("auto", trainer, columns) is None
    assert D.resolve(False, trainer, columns) is None
    assert D.columns_nbytes(columns) == 80
