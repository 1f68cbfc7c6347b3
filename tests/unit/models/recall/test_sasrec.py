"""SASRec (Kang and McAuley, ICDM 2018): the recaller interface, causality, padding, the paper's
block equations against a hand computation, and faiss serving."""

import math

import pytest
import torch

from recolab.index import FaissIndex, csr_from_pairs, exact_topk
from recolab.models.recall.sasrec import SASRec

from .helpers import HISTORY_LEN, NUM_ITEMS, check_model, make_batch

GENRE = (torch.arange(NUM_ITEMS + 1) % 3, 3)


def _build(**overrides):
    def build():
        kwargs = dict(
            num_items=NUM_ITEMS,
            history_len=HISTORY_LEN,
            dim=8,
            num_blocks=2,
            num_heads=2,
            dropout=0.1,
            item_features={"genre": GENRE},
        )
        return SASRec(**{**kwargs, **overrides})

    return build


def _full_history(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"hist_items": torch.randint(1, NUM_ITEMS + 1, (3, HISTORY_LEN), generator=generator)}


def test_sasrec_interface():
    model = check_model(_build(), make_batch())
    assert model.num_interests == 1
    assert "item.table_genre" in model.state_dict()


def test_sasrec_interface_without_features_one_head():
    check_model(_build(item_features=None, num_heads=1, num_blocks=1), make_batch())


def test_output_items_are_the_input_item_embedding():
    """Sec. III-D: items are scored with the embedding that feeds the encoder."""
    model = _build(item_features=None)()
    ids = torch.tensor([1, 5, 20])
    torch.testing.assert_close(model.item_embeddings(ids), model.item.ids.weight[ids])


def test_a_later_behavior_never_changes_an_earlier_output():
    model = _build()().eval()
    batch = _full_history()
    out, _ = model.sequence_outputs(batch)  # (B, L, D)
    for t in range(HISTORY_LEN):
        changed = batch["hist_items"].clone()
        changed[:, t] = changed[:, t] % NUM_ITEMS + 1  # another real item at position t
        new, _ = model.sequence_outputs({"hist_items": changed})
        torch.testing.assert_close(new[:, :t], out[:, :t], rtol=0, atol=0)
        assert not torch.allclose(new[:, t:], out[:, t:])


def test_left_padding_has_no_effect():
    model = _build()().eval()
    batch = make_batch()  # left-padded rows, an empty one
    users = model.user_embeddings(batch)
    wider = torch.cat([torch.zeros(4, 7, dtype=torch.long), batch["hist_items"]], dim=1)
    torch.testing.assert_close(model.user_embeddings({"hist_items": wider}), users)
    with torch.no_grad():  # the padding row of the embedding is never read
        model.item.ids.weight[0] += 100.0
    torch.testing.assert_close(model.user_embeddings(batch), users, rtol=0, atol=0)
    # rows 0, 1, 3 have at most 3 behaviors: a narrower window drops padding only
    short = model.user_embeddings({"hist_items": batch["hist_items"][:, -3:]})
    rows = [0, 1, 3]
    torch.testing.assert_close(short[rows], users[rows], rtol=1e-5, atol=1e-6)


def test_last_behavior_out_of_vocabulary_reads_the_one_before():
    model = _build()().eval()
    batch = _full_history()
    batch["hist_items"][:, -1] = 0  # a held-out item out of the vocabulary reads as padding
    out, _ = model.sequence_outputs(batch)
    torch.testing.assert_close(model.user_embeddings(batch), out[:, -2])


def test_an_empty_history_is_the_learned_empty_vector():
    model = _build()().eval()
    users = model.user_embeddings({"hist_items": torch.zeros(2, HISTORY_LEN, dtype=torch.long)})
    torch.testing.assert_close(users, model.empty.expand(2, -1))


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / math.sqrt(var + norm.eps) * norm.weight + norm.bias


@pytest.mark.parametrize("num_heads", [1, 2])
def test_one_block_matches_the_papers_equations(num_heads):
    """Sec. III-A to III-C by hand, one position at a time: E_i = M_{s_i} + P_i;
    S_i = sum_{j <= i} softmax_j(Q_i . K_j / sqrt(d)) V_j over LayerNorm(E); E + S; then
    F_i = ReLU(LN(x_i) W1 + b1) W2 + b2 added; the final layer norm at the last position."""
    torch.manual_seed(3)
    dim, length = 4, 3
    model = SASRec(
        num_items=6, history_len=length, dim=dim, num_blocks=1, num_heads=num_heads, dropout=0.0
    ).eval()
    with torch.no_grad():  # non-trivial layer norms
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hist = torch.tensor([[0, 4, 2], [5, 1, 3]])  # one left-padded row
    block = model.blocks[0]
    wq, wk, wv = (
        block.attention.query.weight,
        block.attention.key.weight,
        block.attention.value.weight,
    )
    w1, b1 = block.ffn[0].weight, block.ffn[0].bias
    w2, b2 = block.ffn[2].weight, block.ffn[2].bias
    width = dim // num_heads
    expected = []
    with torch.no_grad():
        for row in hist.tolist():
            real = [i for i, item in enumerate(row) if item > 0]
            e = {i: model.item.ids.weight[row[i]] + model.position.weight[i] for i in real}
            ln = {i: _layer_norm(e[i], block.attention_norm) for i in real}
            x = {}
            for i in real:
                s = torch.zeros(dim)
                for h in range(num_heads):
                    sl = slice(h * width, (h + 1) * width)
                    q = (wq @ ln[i])[sl]
                    keys = [j for j in real if j <= i]
                    logits = torch.stack([q @ (wk @ ln[j])[sl] / math.sqrt(width) for j in keys])
                    weights = logits.softmax(0)
                    s[sl] = sum(w * (wv @ ln[j])[sl] for w, j in zip(weights, keys))
                x[i] = e[i] + s
            last = real[-1]
            f = w2 @ torch.relu(w1 @ _layer_norm(x[last], block.ffn_norm) + b1) + b2
            expected.append(_layer_norm(x[last] + f, model.final_norm))
        users = model.user_embeddings({"hist_items": hist})
    torch.testing.assert_close(users, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_served_by_faiss_as_by_the_exact_search():
    model = _build()().eval()
    batch = make_batch()
    with torch.no_grad():
        users = model.user_embeddings(batch)  # (B, D)
        items = model.all_item_embeddings()  # (I, D)
    rows = torch.arange(4).repeat_interleave(2)
    seen = csr_from_pairs(rows, torch.tensor([1, 2, 3, 4, 5, 6, 7, 8]), num_rows=4)
    _, exact_ids = exact_topk(users, items, k=5, exclude=seen)
    _, ids = FaissIndex(kind="flat").build(items).search(users, 5, exclude=seen)
    assert torch.equal(torch.as_tensor(ids), exact_ids)
    assert (exact_ids > 0).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide dim \(8\)"):
        _build(num_heads=3)()
    with pytest.raises(ValueError, match="dropout"):
        _build(dropout=1.0)()
    with pytest.raises(ValueError, match="num_blocks"):
        _build(num_blocks=0)()
