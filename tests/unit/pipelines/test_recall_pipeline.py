"""The retrieval pipeline: samplers in training, exclusions, exact vs faiss, baselines, multi-interest."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import pytorch_lightning as pl
import scipy.stats
import torch

from recolab.data.retrieval import RetrievalDataModule
from recolab.index import exact_topk
from recolab.metrics.registry import METRICS, RetrievalInputs, metric_set, retrieval_values
from recolab.models.recall import MIND, TwoTower, merge_interest_topk
from recolab.pipelines.recall import RecallModule, repeat_rows_csr
from recolab.samplers import InBatchSoftmax, MixedNegativeSoftmax


def retrieval_metrics(topk, targets, *, ks, item_counts, names=None) -> dict[str, float]:
    """The recall pipeline's metric set (every registered retrieval metric by default)."""
    names = names or [m.name for m in METRICS.values() if m.kind == "retrieval"]
    metrics = metric_set(names, "retrieval", key="module.metrics")
    return retrieval_values(metrics, RetrievalInputs(topk, targets, item_counts), ks)


class TableModule(RetrievalDataModule):
    def __init__(self, table: pa.Table, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = table

    def _load(self):
        return "memory.parquet", self.table


def _log(seed: int = 0, users: int = 40, items: int = 60, n: int = 1200) -> pa.Table:
    rng = np.random.default_rng(seed)
    # popular items are drawn more often, so the popularity baseline has something to find
    weights = 1.0 / np.arange(1, items + 1)
    return pa.table(
        {
            "user_id": rng.integers(1, users + 1, n),
            "item_id": rng.choice(np.arange(1, items + 1), n, p=weights / weights.sum()),
            "timestamp": rng.permutation(n),
            "category": rng.integers(0, 4, n),
        }
    )


@pytest.fixture(scope="module")
def data() -> TableModule:
    dm = TableModule(
        _log(),
        min_interactions=3,
        history_len=6,
        item_features=["category"],
        batch_size=64,
        eval_batch_size=16,
    )
    dm.setup()
    return dm


def _module(dm: TableModule, model_cls=TwoTower, *, seed: int = 0, **kw) -> RecallModule:
    torch.manual_seed(seed)
    inputs = dm.model_inputs()
    if model_cls is TwoTower:
        model = TwoTower(**inputs, dim=8, hidden_dims=[16])
    else:
        model = MIND(
            num_items=inputs["num_items"],
            item_features=inputs["item_features"],
            history_len=6,
            dim=8,
            num_interests=3,
        )
    return RecallModule(model, **dm.module_inputs(), ks=(5, 10), **kw)


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        **kw,
    )


@pytest.mark.parametrize(
    "sampler",
    [
        InBatchSoftmax(),
        InBatchSoftmax(logq=True),
        MixedNegativeSoftmax(num_negatives=16, logq=True),
        InBatchSoftmax(similarity="cosine", temperature=0.1),
    ],
    ids=["in_batch", "logq", "mixed", "cosine"],
)
def test_training_steps_learn_and_update_the_estimator(data, sampler):
    module = _module(data, sampler=sampler, lr=0.01)
    opt = module.configure_optimizers()
    module.log = lambda *a, **k: None
    batches = list(data.train_dataloader())
    losses = []
    for _ in range(4):
        for b in batches:
            loss = module.training_step(b, 0)
            opt.zero_grad()
            loss.backward()
            assert all(
                torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None
            )
            opt.step()
            losses.append(float(loss.detach()))
    assert np.mean(losses[-len(batches) :]) < np.mean(losses[: len(batches)])
    if sampler.logq:
        # updated once per training step, and part of the state dict (so of checkpoints)
        assert int(module.sampler.frequency.step) == 4 * len(batches)
        assert "sampler.frequency.interval" in module.state_dict()
    else:
        assert module.sampler.frequency is None


def test_training_items_are_excluded_from_rankings(data):
    module = _module(data).eval()
    for split, loader in (("val", data.val_dataloader()), ("test", data.test_dataloader())):
        module.reset()
        for batch in loader:
            seen = (batch["seen"]["indptr"], batch["seen"]["indices"])
            with torch.no_grad():
                ids = module.retrieve(batch["features"], seen)
                popular = module.popular_topk(seen, len(ids))
                random = module.random_topk(seen, batch["features"]["user_id"])
            for got in (ids, popular, random):
                for row in range(len(ids)):
                    excluded = set(seen[1][seen[0][row] : seen[0][row + 1]].tolist())
                    assert excluded, "every evaluated user has earlier items"
                    listed = [i for i in got[row].tolist() if i > 0]
                    assert not excluded & set(listed), f"{split}: a seen item was retrieved"
                    assert len(listed) == len(set(listed)) and 0 not in got[row].tolist()
                    # every unseen corpus item is available: the list is full up to the corpus size
                    assert len(listed) == min(module.max_k, module.num_items - len(excluded))


def test_exact_and_faiss_flat_give_the_same_metrics(data):
    results = {}
    for index in ("exact", "flat"):
        module = _module(data, seed=3, index=index)
        _trainer(max_epochs=1).fit(module, datamodule=data)
        _trainer().test(module, datamodule=data, verbose=False)
        results[index] = module.test_summary["values"]
    exact, flat = results["exact"], results["flat"]
    assert exact["test/recall_at_10"] > 0 and "test/index_recall_at_10" not in exact
    assert flat["test/index_recall_at_10"] == 1.0
    for key, value in exact.items():
        assert flat[key] == pytest.approx(value, abs=1e-9), key


def test_popularity_baseline_matches_a_hand_computation():
    # user 1: a b c d (times 1..4) -> val c, test d, train a b
    # user 2: b c e            -> val c, test e, train b
    # user 3: c a b e           -> val b, test e, train c a
    rows = [
        (1, "a", 1),
        (1, "b", 2),
        (1, "c", 3),
        (1, "d", 4),
        (2, "b", 1),
        (2, "c", 2),
        (2, "e", 3),
        (3, "c", 1),
        (3, "a", 2),
        (3, "b", 3),
        (3, "e", 4),
    ]
    codes = {"a": 11, "b": 12, "c": 13, "d": 14, "e": 15}
    table = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [codes[r[1]] for r in rows],
            "timestamp": [r[2] for r in rows],
        }
    )
    dm = TableModule(table, min_interactions=3, history_len=3, eval_batch_size=2)
    dm.setup()
    # training counts: a 2, b 2, c 1 (d and e are never training items: out of vocabulary)
    vocab = dm.vocabs["item_id"].values.tolist()
    assert vocab == [11, 12, 13] and dm.item_counts.tolist() == [0, 2, 2, 1]
    module = RecallModule(
        TwoTower(**dm.model_inputs(), dim=4, hidden_dims=[]), **dm.module_inputs(), ks=(1, 2)
    )
    got = {}
    for batch in dm.test_dataloader():
        seen = (batch["seen"]["indptr"], batch["seen"]["indices"])
        for uid, ids in zip(
            batch["features"]["user_id"].tolist(),
            module.popular_topk(seen, len(seen[0]) - 1).tolist(),
        ):
            got[uid] = ids
    # by count, ties by the lower id: a(1), b(2), c(3); each user's earlier items excluded;
    # user 1 has seen a b c at test, user 2 b c, user 3 c a b
    assert got == {1: [-1, -1], 2: [1, -1], 3: [-1, -1]}
    for batch in dm.val_dataloader():
        seen = (batch["seen"]["indptr"], batch["seen"]["indices"])
        for uid, ids, target in zip(
            batch["features"]["user_id"].tolist(),
            module.popular_topk(seen, len(seen[0]) - 1).tolist(),
            batch["targets"]["item_id"][:, 0].tolist(),
        ):
            got[uid] = (ids, target)
    # validation: user 1 saw a b -> [c, -]; user 2 saw b -> [a, c]; user 3 saw c a -> [b, -]
    assert got == {1: ([3, -1], 3), 2: ([1, 3], 3), 3: ([2, -1], 2)}
    targets = np.array([[3], [3], [2]])
    m = retrieval_metrics(
        np.array([[3, -1], [1, 3], [2, -1]]), targets, ks=(1, 2), item_counts=dm.item_counts.numpy()
    )
    assert m["recall_at_1"] == pytest.approx(2 / 3) and m["recall_at_2"] == 1.0
    assert m["mrr"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["retrieved_popularity_at_2"] == pytest.approx(  # the top 2: all there is
        (np.log(2) + (np.log(3) + np.log(2)) / 2 + np.log(3)) / 3
    )


def test_multi_interest_serving_merges_each_interests_topk(data):
    module = _module(data, MIND).eval()
    batch = next(iter(data.test_dataloader()))
    seen = (batch["seen"]["indptr"], batch["seen"]["indices"])
    with torch.no_grad():
        got = module.retrieve(batch["features"], seen)
        users = module.model.user_embeddings(batch["features"])  # (B, K, D)
        items = module.model.all_item_embeddings()
        b, k, d = users.shape
        per_interest = [exact_topk(users[:, j], items, k=10, exclude=seen) for j in range(k)]
        scores = torch.stack([s for s, _ in per_interest], 1)
        ids = torch.stack([i for _, i in per_interest], 1)
        want, _ = merge_interest_topk(ids, scores, n=10)
    torch.testing.assert_close(got, want)


def test_repeat_rows_csr():
    indptr, indices = torch.tensor([0, 2, 2, 3]), torch.tensor([5, 6, 7])
    ptr, idx = repeat_rows_csr(indptr, indices, 2)
    assert ptr.tolist() == [0, 2, 4, 4, 4, 5, 6] and idx.tolist() == [5, 6, 5, 6, 7, 7]


def test_checkpoint_state_loads_weights_only(data):
    module = _module(data, sampler=InBatchSoftmax(logq=True))
    module.run_info = {"config": "exp_name: x", "run_id": ""}
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, datamodule=data)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert (
        loaded["recolab"]["config"] == "exp_name: x" and "vocabs" in loaded["recolab"]["data_state"]
    )
    fresh = _module(data, sampler=InBatchSoftmax(logq=True), seed=9)
    fresh.load_state_dict(loaded["state_dict"])
    assert int(fresh.sampler.frequency.step) == int(module.sampler.frequency.step) > 0
    # A checkpoint written before samplers were objects holds the estimate at `frequency.`.
    old = {
        (k.removeprefix("sampler.") if k.startswith("sampler.frequency.") else k): v
        for k, v in loaded["state_dict"].items()
    }
    assert "frequency.step" in old
    older = _module(data, sampler=InBatchSoftmax(logq=True), seed=9)
    older.load_state_dict(old)
    assert int(older.sampler.frequency.step) == int(module.sampler.frequency.step)


def test_bad_settings_fail_with_the_key():
    with pytest.raises(ValueError, match="similarity='l2': expected one of 'dot' or 'cosine'"):
        InBatchSoftmax(similarity="l2")
    with pytest.raises(ValueError, match="temperature=0: expected a number > 0"):
        InBatchSoftmax(temperature=0)
    with pytest.raises(ValueError, match="num_negatives=0: expected a number >= 1"):
        MixedNegativeSoftmax(num_negatives=0)
    with pytest.raises(
        ValueError, match="distribution='zipf': expected one of 'uniform' or 'popularity'"
    ):
        MixedNegativeSoftmax(distribution="zipf")
    model = TwoTower(num_users=3, num_items=4, dim=4)
    with pytest.raises(ValueError, match="index='annoy': expected one of 'exact', 'flat'"):
        RecallModule(model, num_items=4, item_counts=torch.ones(5, dtype=torch.long), index="annoy")
    with pytest.raises(ValueError, match=r"item_counts must have shape \(5,\)"):
        RecallModule(model, num_items=4, item_counts=torch.ones(4, dtype=torch.long))


def test_a_users_random_baseline_does_not_depend_on_its_batch(data):
    """Evaluation batches differ with the batch size and the number of DDP ranks: each user's
    random list must come out the same in any batch (it once came from the batch's first user)."""
    module = _module(data).eval()
    batch = next(iter(data.test_dataloader()))
    indptr, indices = batch["seen"]["indptr"], batch["seen"]["indices"]
    users = batch["features"]["user_id"]
    together = module.random_topk((indptr, indices), users)
    for row in (0, 1, len(users) - 1):  # each user alone in its batch
        alone_ptr = torch.tensor([0, int(indptr[row + 1] - indptr[row])])
        alone = module.random_topk(
            (alone_ptr, indices[indptr[row] : indptr[row + 1]]), users[row : row + 1]
        )
        assert torch.equal(alone[0], together[row])
    assert not torch.equal(together[0], together[1]), "users get different orders"
    module.seed += 1  # the run's seed (`seed=`) changes every user's draws
    assert not torch.equal(module.random_topk((indptr, indices), users), together)


def test_the_random_baseline_puts_every_item_first_equally_often(data):
    """Over many users with nothing seen, each corpus item is the first pick about equally
    often (a chi-square test at the 0.1% level; the draws are fixed by the seed)."""
    module = _module(data).eval()
    users = torch.arange(1, 30_001)
    nothing_seen = (torch.zeros(len(users) + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    first = module.random_topk(nothing_seen, users)[:, 0]
    counts = torch.bincount(first, minlength=module.num_items + 1)[1:].double()
    assert (counts > 0).all()
    expected = len(users) / module.num_items
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < scipy.stats.chi2.ppf(0.999, module.num_items - 1), chi2


def test_bf16_mixed_evaluation_ranks_as_float32_does():
    # trainer.precision=bf16-mixed (configs/trainer/gpu.yaml) runs evaluation steps under
    # autocast; the exact ranking (the reference of test/index_recall_at_K) and the most-popular
    # baseline must still score in float32, as the faiss index does. 1,500 items: popularity
    # ranks above 256 are not apart in bfloat16.
    rng = np.random.default_rng(0)
    n = 12_000
    table = pa.table(
        {
            "user_id": rng.integers(0, 300, n),
            "item_id": rng.zipf(1.2, n) % 1500,
            "timestamp": rng.integers(0, 10**6, n),
        }
    )
    dm = TableModule(table, history_len=10, min_interactions=3, batch_size=256, eval_batch_size=128)
    dm.setup()
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        torch.manual_seed(0)
        module = RecallModule(
            TwoTower(
                **{k: v for k, v in dm.model_inputs().items() if k != "item_features"}, dim=32
            ),
            **dm.module_inputs(),
            ks=(50,),
            index="flat",
            sampler=InBatchSoftmax(similarity="cosine"),
        )
        _trainer(precision=precision).test(module, datamodule=dm, verbose=False)
        results[precision] = module.test_summary["values"]
    assert results["bf16-mixed"]["test/index_recall_at_50"] == 1.0
    for key, value in results["32-true"].items():
        if key.startswith("baseline_popular/"):
            assert results["bf16-mixed"][key] == value, key


def test_retrieved_popularity_is_named_after_the_cut_off_it_measured():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 100, 300)
    topk = rng.permutation(np.arange(1, 300))[:60].reshape(3, 20)  # max(ks) = 20 < 50
    m = retrieval_metrics(topk, np.array([[1], [2], [3]]), ks=(10, 20), item_counts=counts)
    assert "retrieved_popularity_at_50" not in m
    assert m["retrieved_popularity_at_20"] == pytest.approx(np.log1p(counts[topk]).mean(1).mean())
    wide = np.concatenate([topk, topk, topk], axis=1)  # max(ks) = 60: the top 50 count
    m = retrieval_metrics(wide, np.array([[1], [2], [3]]), ks=(60,), item_counts=counts)
    assert m["retrieved_popularity_at_50"] == pytest.approx(
        np.log1p(counts[wide[:, :50]]).mean(1).mean()
    )


def test_the_declared_metric_set_is_what_is_logged(data):
    module = _module(data, metrics=["mrr", "recall"])
    assert module.logged_metric_names("val") == ["val/recall_at_5", "val/recall_at_10", "val/mrr"]
    with pytest.raises(
        ValueError,
        match=r"metrics=\['recal'\]: expected names of retrieval metrics.*did you mean 'recall'",
    ):
        _module(data, metrics=["recal"])
    with pytest.raises(ValueError, match="did you mean 'recall'"):
        _module(data, metrics=["recal"])
