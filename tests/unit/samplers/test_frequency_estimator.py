"""Streaming frequency estimation (Yi et al., RecSys 2019, Algorithm 2; DESIGN.md section 4)."""

import torch

from recolab.samplers import StreamingFrequencyEstimator


def _zipf(num_items, exponent):
    weights = 1.0 / torch.arange(1, num_items + 1, dtype=torch.float64) ** exponent
    return weights / weights.sum()  # (I,) per-draw probability of items 1..I


def _draw(pi, shape, generator):
    cdf = pi.cumsum(0)
    u = torch.rand(shape, generator=generator, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u).clamp(max=pi.numel() - 1) + 1  # ids 1..I


def test_estimate_converges_to_the_per_batch_occurrence_probability():
    """Within 10% relative error for every item (all have p >= 0.05) after 6,000 steps.

    A single stream's estimate is a moving average with alpha = 0.01, whose own noise is about
    sqrt(alpha / 2) = 7% relative; 16 independent streams (disjoint id ranges in one
    estimator: each replica's items never meet another's) are averaged so that a tolerance of 10%
    tests the bias of the estimate, not its noise.
    """
    num_items, batch, replicas, steps = 100, 32, 16, 6000
    pi = _zipf(num_items, 1.0)
    p_true = 1 - (1 - pi) ** batch  # probability that an item appears in a batch of 32 draws
    assert p_true.min() > 0.05

    generator = torch.Generator().manual_seed(0)
    draws = _draw(pi, (steps, replicas, batch), generator)  # (steps, R, B)
    draws += torch.arange(replicas).view(1, replicas, 1) * num_items  # replica r: ids r*I + 1..
    estimator = StreamingFrequencyEstimator(num_buckets=2**16, num_hashes=2, alpha=0.01)
    for t in range(steps):
        estimator.update(draws[t].reshape(-1))

    ids = torch.arange(1, num_items + 1) + torch.arange(replicas).unsqueeze(1) * num_items
    p_hat = estimator.probability(ids.reshape(-1)).reshape(replicas, num_items).double()
    relative_error = (p_hat.mean(0) / p_true - 1).abs()
    assert relative_error.max() < 0.10
    # a single stream: the mean error stays within the moving average's noise
    assert (p_hat[0] / p_true - 1).abs().mean() < 0.10
    assert int(estimator.step) == steps


def test_more_hashes_reduce_collision_error_with_few_buckets():
    num_items, batch, steps = 300, 16, 2000
    pi = _zipf(num_items, 0.8)
    p_true = 1 - (1 - pi) ** batch
    draws = _draw(pi, (steps, batch), torch.Generator().manual_seed(0))
    errors = {}
    for num_hashes in (1, 4):
        estimator = StreamingFrequencyEstimator(num_buckets=128, num_hashes=num_hashes)
        for t in range(steps):
            estimator.update(draws[t])
        p_hat = estimator.probability(torch.arange(1, num_items + 1)).double()
        errors[num_hashes] = (p_hat.log() - p_true.log()).abs().mean().item()
    # collisions only shorten intervals (over-estimate p); the largest interval is the least hit
    assert errors[4] < 0.8 * errors[1]


def _reference(stream, *, multipliers, num_buckets, alpha, initial_interval):
    """The update rule item by item, in plain Python (hashes included)."""
    shift = 32 - (num_buckets.bit_length() - 1)
    hashes = [int(a) for a in multipliers]
    last = [dict() for _ in hashes]
    interval = [dict() for _ in hashes]
    start = 1.0 if initial_interval is None else initial_interval
    for t, batch in enumerate(stream, start=1):
        for item in batch:
            for h, a in enumerate(hashes):
                b = ((a * item) % 2**32) >> shift
                gap = t - last[h].get(b, 0)
                if initial_interval is None and b not in last[h]:
                    interval[h][b] = float(gap)
                else:
                    interval[h][b] = (1 - alpha) * interval[h].get(b, start) + alpha * gap
                last[h][b] = t

    def probability(item):
        worst = max(
            interval[h].get(((a * item) % 2**32) >> shift, start) for h, a in enumerate(hashes)
        )
        return 1.0 / worst

    return probability


def test_vectorized_update_equals_the_per_item_reference():
    generator = torch.Generator().manual_seed(0)
    num_buckets = 2**20
    stream = [torch.randperm(60, generator=generator)[:8] + 1 for _ in range(200)]
    for initial_interval in (None, 5.0):
        estimator = StreamingFrequencyEstimator(
            num_buckets=num_buckets, num_hashes=3, alpha=0.1, initial_interval=initial_interval
        )
        # the reference updates a bucket once per item: make sure no two items of a step collide
        for batch in stream:
            buckets = estimator.buckets(batch)
            assert all(row.unique().numel() == batch.numel() for row in buckets)
        for batch in stream:
            estimator.update(batch)
        reference = _reference(
            [b.tolist() for b in stream],
            multipliers=estimator.multipliers.tolist(),
            num_buckets=num_buckets,
            alpha=0.1,
            initial_interval=initial_interval,
        )
        items = torch.arange(0, 70)  # 61..69 and 0 are never seen
        expected = torch.tensor([reference(i) for i in items.tolist()])
        torch.testing.assert_close(estimator.probability(items), expected.float())


def test_duplicates_in_a_batch_count_once():
    once, twice = (
        StreamingFrequencyEstimator(num_buckets=1024),
        StreamingFrequencyEstimator(num_buckets=1024),
    )
    for t in range(10):
        once.update(torch.tensor([3, 4]))
        twice.update(torch.tensor([3, 3, 4, 3]) if t % 2 else torch.tensor([4, 3, 3]))
    torch.testing.assert_close(once.interval, twice.interval)
    torch.testing.assert_close(once.probability(torch.tensor([3, 4])), torch.ones(2))


def test_never_seen_items_are_not_corrected():
    estimator = StreamingFrequencyEstimator(num_buckets=1024)
    estimator.update(torch.tensor([1, 2]))
    assert torch.all(estimator.log_q(torch.tensor([500, 501])) == 0)
    torch.testing.assert_close(estimator.log_q(torch.tensor([1])), torch.zeros(1))


def test_state_dict_round_trip():
    estimator = StreamingFrequencyEstimator(num_buckets=256, num_hashes=2, seed=7)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        estimator.update(torch.randint(1, 100, (16,), generator=generator))
    state = estimator.state_dict()
    assert {"step", "last_step", "interval", "multipliers"} <= set(state)

    restored = StreamingFrequencyEstimator(num_buckets=256, num_hashes=2, seed=0)
    restored.load_state_dict(state)
    items = torch.arange(1, 100)
    torch.testing.assert_close(restored.probability(items), estimator.probability(items))
    batch = torch.randint(1, 100, (16,), generator=generator)
    restored.update(batch)
    estimator.update(batch)
    torch.testing.assert_close(restored.log_q(items), estimator.log_q(items))


def _ddp_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    estimator = StreamingFrequencyEstimator(num_buckets=1024)
    batches = [[torch.tensor([1, 2, 3, 4, 5]), torch.tensor([2, 9])], [torch.tensor([7, 8, 9])] * 2]
    for batch in batches[rank]:  # unequal batch sizes across ranks
        estimator.update(batch)
    torch.save(estimator.state_dict(), f"{result_file}.{rank}")
    dist.destroy_process_group()


# Two real gloo processes, about 5 s: in the default suite, so CI checks the sync (issue #7).
def test_ddp_update_applies_the_global_batch_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, tmp_path / "init", tmp_path / "state"), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"state.{rank}") for rank in range(2)]
    single = StreamingFrequencyEstimator(num_buckets=1024)
    single.update(torch.tensor([1, 2, 3, 4, 5, 7, 8, 9]))
    single.update(torch.tensor([2, 9, 7, 8, 9]))
    for state in states:
        for name, value in single.state_dict().items():
            assert torch.equal(state[name], value), name
