"""Corpus negatives and the mixed-negative softmax (Yang et al., WWW 2020)."""

import math

import pytest
import torch

from recolab.samplers import CorpusNegativeSampler, MixedNegativeSoftmax, mask_value

# 99.9% quantile of chi-square with 19 degrees of freedom.
CHI2_19_999 = 43.82


def _chi_square(ids, probs, num):
    counts = torch.bincount(ids, minlength=probs.numel()).double()
    keep = probs > 0
    expected = probs[keep] * num
    return (((counts[keep] - expected) ** 2) / expected).sum().item(), counts


def test_uniform_sampler_frequencies_match():
    sampler = CorpusNegativeSampler(num_items=20)
    ids, log_q = sampler.sample(100_000, generator=torch.Generator().manual_seed(0))
    assert ids.min() >= 1 and ids.max() <= 20
    torch.testing.assert_close(log_q, torch.full_like(log_q, -math.log(20)))
    stat, _ = _chi_square(ids, sampler.probs, 100_000)
    assert stat < CHI2_19_999


def test_popularity_sampler_frequencies_match_counts_to_the_power():
    counts = torch.tensor([1000.0] + [float(c) for c in range(1, 21)])  # entry 0 is ignored
    counts[7] = 0.0  # never drawn
    sampler = CorpusNegativeSampler(
        num_items=20, distribution="popularity", power=0.75, item_counts=counts
    )
    weights = counts.double() ** 0.75
    weights[0] = 0
    probs = weights / weights.sum()
    torch.testing.assert_close(sampler.probs, probs)

    ids, log_q = sampler.sample(100_000, generator=torch.Generator().manual_seed(1))
    stat, observed = _chi_square(ids, probs, 100_000)
    assert observed[0] == 0 and observed[7] == 0
    assert stat < 41.3  # 99.9% quantile, 18 degrees of freedom (item 7 is out)
    torch.testing.assert_close(log_q, probs[ids].log().float())


def test_sampler_is_reproducible_with_a_generator():
    sampler = CorpusNegativeSampler(
        num_items=50, distribution="popularity", item_counts=torch.arange(51.0)
    )
    a = sampler.sample(64, generator=torch.Generator().manual_seed(3))[0]
    b = sampler.sample(64, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_popularity_needs_counts():
    with pytest.raises(ValueError, match="item_counts"):
        CorpusNegativeSampler(num_items=5, distribution="popularity")


def test_mixed_loss_equals_hand_computed_value():
    # B = 3 rows, D = 2, N = 2 corpus negatives; corpus negative 1 is item 12, row 1's positive.
    user = [[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2]]
    pos = [[0.2, 1.0], [1.5, -0.4], [-0.6, 0.3]]
    neg = [[0.9, 0.9], [-1.0, 0.4]]
    pos_ids, neg_ids = [11, 12, 13], [40, 12]
    pos_log_q = [math.log(0.5), math.log(0.1), math.log(0.02)]
    neg_log_q = [math.log(0.01), math.log(0.002)]
    tau = 0.5

    def dot(a, b):
        return a[0] * b[0] + a[1] * b[1]

    expected = 0.0
    for i in range(3):
        logits = [dot(user[i], pos[j]) / tau - pos_log_q[j] for j in range(3)]
        for n in range(2):
            if neg_ids[n] != pos_ids[i]:  # accidental hit: row 1 drops corpus column 1
                logits.append(dot(user[i], neg[n]) / tau - (neg_log_q[n] + math.log(2)))
        expected += math.log(sum(math.exp(z) for z in logits)) - logits[i]
    expected /= 3

    loss = MixedNegativeSoftmax(temperature=tau, num_negatives=2).loss(
        torch.tensor(user),
        torch.tensor(pos),
        torch.tensor(pos_ids),
        log_q=torch.tensor(pos_log_q),
        negatives=(torch.tensor(neg), torch.tensor(neg_ids), torch.tensor(neg_log_q)),
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mixed_masking_covers_both_sources():
    pos_ids = torch.tensor([4, 8, 4])
    neg_ids = torch.tensor([8, 1, 4, 4])
    user, pos, neg = torch.randn(3, 5), torch.randn(3, 5), torch.randn(4, 5)
    raw = MixedNegativeSoftmax(num_negatives=4, mask_accidental_hits=False).logits(
        user, pos, pos_ids, negatives=(neg, neg_ids, None)
    )
    masked = MixedNegativeSoftmax(num_negatives=4).logits(
        user, pos, pos_ids, negatives=(neg, neg_ids, None)
    )
    got = {tuple(x) for x in (masked == mask_value(torch.float32)).nonzero().tolist()}
    # in-batch: rows 0 and 2 (item 4); corpus: item 8 at column 3 + 0, item 4 at 3 + 2, 3 + 3
    assert got == {(0, 2), (2, 0), (1, 3), (0, 5), (0, 6), (2, 5), (2, 6)}
    keep = masked != mask_value(torch.float32)
    torch.testing.assert_close(masked[keep], raw[keep])
