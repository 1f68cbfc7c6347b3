"""The block library: the MLP and task towers, BatchedMLPs against E separate nn.Linear/ReLU
stacks, the embedding tables and FeatureEmbedding's CPU lookup."""

import math

import pytest
import torch
from torch import nn

from recolab.models.blocks import (
    MLP,
    BatchedMLPs,
    EmbeddingTables,
    FeatureEmbedding,
    TaskTowers,
    masked_mean,
)

from .rank.helpers import SCHEMA, tiny_batch

E, B, F = 3, 5, 7


def reference(block: BatchedMLPs) -> list[nn.Sequential]:
    """E plain Linear (-> BatchNorm1d) -> ReLU stacks (no ReLU after an `out_dim` layer) with the
    block's weights and normalization parameters copied in."""
    stacks = []
    for e in range(E):
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(block.weights, block.biases)):
            linear = nn.Linear(w.shape[1], w.shape[2])
            with torch.no_grad():
                linear.weight.copy_(w[e].t())
                linear.bias.copy_(b[e])
            layers.append(linear)
            if i < block.hidden:
                if block.norms is not None:
                    h = w.shape[2]
                    norm = nn.BatchNorm1d(h)
                    with torch.no_grad():
                        norm.weight.copy_(block.norms[i].weight[e * h : (e + 1) * h])
                        norm.bias.copy_(block.norms[i].bias[e * h : (e + 1) * h])
                    layers.append(norm)
                layers.append(nn.ReLU())
        stacks.append(nn.Sequential(*layers))
    return stacks


@pytest.mark.parametrize(
    "dims, out_dim, shared",
    [([8, 4], None, True), ([8], 1, False), ([6, 5, 4], None, False), ([], 2, True)],
)
def test_batched_mlps_match_separate_linear_relu_stacks_forward_and_backward(dims, out_dim, shared):
    torch.manual_seed(0)
    block = BatchedMLPs(E, F, dims, out_dim=out_dim)
    stacks = reference(block)
    x = torch.randn(B, F) if shared else torch.randn(E, B, F)
    x_block, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()

    out = block(x_block)  # (E, B, H)
    inputs = [x_ref] * E if shared else list(x_ref)
    expected = torch.stack([s(xi) for s, xi in zip(stacks, inputs)])
    assert out.shape == (E, B, block.output_dim)
    torch.testing.assert_close(out, expected)

    weights = torch.randn_like(out)  # a loss that weighs every output differently
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_block.grad, x_ref.grad)
    for e, stack in enumerate(stacks):
        linears = [m for m in stack if isinstance(m, nn.Linear)]
        for w, b, linear in zip(block.weights, block.biases, linears):
            torch.testing.assert_close(w.grad[e], linear.weight.grad.t())
            torch.testing.assert_close(b.grad[e], linear.bias.grad)


def test_batched_mlps_initialize_like_separate_mlps_under_the_same_seed():
    # nn.Linear's init (kaiming-uniform(a=sqrt(5)) weights, U(+-1/sqrt(fan_in)) biases), drawn in
    # the order of E MLPs built one after another: the same numbers, not only the same law.
    torch.manual_seed(0)
    block = BatchedMLPs(E, F, [8, 4], out_dim=1)
    torch.manual_seed(0)
    mlps = [MLP(F, [8, 4], out_dim=1) for _ in range(E)]
    for e, mlp in enumerate(mlps):
        for got, want in zip(block.expert(e).parameters(), mlp.parameters()):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    for w, (d_in, _) in zip(block.weights, block._layers()):
        assert w.abs().max() <= 1 / math.sqrt(d_in)


def test_batched_mlps_dropout_is_off_in_eval_and_on_in_training():
    torch.manual_seed(0)
    block = BatchedMLPs(E, F, [64], dropout=0.5)
    x = torch.randn(B, F)
    block.eval()
    torch.testing.assert_close(block(x), torch.stack([block.expert(e).eval()(x) for e in range(E)]))
    block.train()
    assert (block(x) == 0).float().mean() > 0.3  # about half zeroed, plus the ReLU's zeros


def test_batched_mlps_refuse_empty_shapes():
    with pytest.raises(ValueError, match="at least one MLP"):
        BatchedMLPs(0, F, [4])
    with pytest.raises(ValueError, match="at least one layer"):
        BatchedMLPs(E, F, [])


def test_cpu_lookup_gives_the_embedding_layers_outputs_and_gradients():
    # Dense CPU tables gather with index_select (a faster backward); nn.Embedding is the reference.
    torch.manual_seed(0)
    emb = FeatureEmbedding(SCHEMA, embedding_dim=4)
    batch = tiny_batch()
    batch["hist"][0] = 0  # an all-padding history
    batch["hist"][1, :2] = 0  # a partly padded one
    out = emb(batch)
    out.pow(2).sum().backward()
    got = {k: p.grad.clone() for k, p in emb.named_parameters()}

    emb.zero_grad()
    parts = [emb.tables[f.name](batch[f.name]) for f in SCHEMA.sparse]
    ids = batch["hist"]
    e = emb.tables["item_id"](ids)
    mask = (ids > 0).unsqueeze(-1).float()
    parts.append((e * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    parts.append(torch.stack([batch[f.name] for f in SCHEMA.dense], dim=1))
    expected = torch.cat(parts, dim=1)
    expected.pow(2).sum().backward()
    torch.testing.assert_close(out, expected)
    for k, p in emb.named_parameters():
        torch.testing.assert_close(got[k], p.grad)


@pytest.mark.parametrize("dropout", [0.0, 0.3])  # with dropout the Linear layers sit at 0, 3, ...
def test_batched_mlps_load_a_state_saved_as_separate_mlps(dropout):
    torch.manual_seed(0)
    separate = nn.ModuleList([MLP(6, [5, 4], dropout=dropout, out_dim=2) for _ in range(3)])
    batched = BatchedMLPs(3, 6, [5, 4], dropout=dropout, out_dim=2)  # other weights
    holder = nn.Module()
    holder.experts = batched
    old = {f"experts.{k}": v for k, v in separate.state_dict().items()}
    holder.load_state_dict(old)  # strict: every old key used, every new one filled
    batched.eval(), separate.eval()
    x = torch.randn(7, 6)
    torch.testing.assert_close(batched(x), torch.stack([m(x) for m in separate]))


@pytest.mark.parametrize("shape", [(2048, 3, 4), (5, 7), (1, 1), (4, 2, 3, 2)])
def test_softmax_last_is_softmax_over_the_last_dimension_values_and_gradients(shape):
    from recolab.models.blocks import softmax_last

    torch.manual_seed(0)
    x = (torch.randn(shape) * 30).requires_grad_()  # large logits: the max subtraction matters
    y = x.detach().clone().requires_grad_()
    got, want = softmax_last(x), y.softmax(-1)
    torch.testing.assert_close(got, want)
    assert got.shape == want.shape
    w = torch.randn(shape)
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize("shared", [True, False])
def test_batched_mlps_under_bf16_autocast_run_the_function_as_autocast_runs_linear_stacks(shared):
    # Under trainer.precision=bf16-mixed the block still runs as one Function (its backward),
    # on bf16 casts of the input and parameters: the products autocast would run in bf16. Its
    # outputs and float32 gradients match E nn.Linear/ReLU stacks run under the same autocast.
    torch.manual_seed(0)
    block = BatchedMLPs(E, F, [8, 4], out_dim=2)
    stacks = reference(block)
    x = torch.randn(B, F) if shared else torch.randn(E, B, F)
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        want = torch.stack([s(x_ref if shared else x_ref[e]) for e, s in enumerate(stacks)])
    assert type(out.grad_fn).__name__ == "_BatchedMLPsFunctionBackward"
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2)
    weights = torch.randn(out.shape)
    (out.float() * weights).sum().backward()
    (want.float() * weights).sum().backward()
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, x_ref.grad, atol=3e-2, rtol=3e-2)
    for e, s in enumerate(stacks):
        linears = [m for m in s if isinstance(m, nn.Linear)]
        for w, b, linear in zip(block.weights, block.biases, linears):
            assert w.grad.dtype == b.grad.dtype == torch.float32
            torch.testing.assert_close(w.grad[e], linear.weight.grad.t(), atol=3e-2, rtol=3e-2)
            torch.testing.assert_close(b.grad[e], linear.bias.grad, atol=3e-2, rtol=3e-2)
    # Far from float32: the products really ran in bf16 (a float32 run differs).
    with torch.autocast("cpu", enabled=False):
        exact = block(x.detach())
    assert not torch.equal(out.float(), exact)


def test_batched_mlps_train_with_dropout() -> None:
    # Training-time dropout runs the block layer by layer under autograd: gradients reach the
    # input and every weight.
    torch.manual_seed(0)
    block = BatchedMLPs(E, F, [8, 4], dropout=0.5)
    x = torch.randn(B, F, requires_grad=True)
    out = block(x)
    assert out.dtype == torch.float32
    assert type(out.grad_fn).__name__ != "_BatchedMLPsFunctionBackward"
    out.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())


def test_rank_module_leaves_cpu_batches_in_place_and_moves_others() -> None:
    from recolab.models.rank.mmoe import MMoE
    from recolab.pipelines.rank import RankModule

    module = RankModule(MMoE(SCHEMA, num_experts=2, expert_dims=[8], tower_dims=[4]), SCHEMA)
    batch = {"features": tiny_batch(batch=4), "labels": {"click": torch.zeros(4)}}
    assert module.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["features"]["user_id"].device.type == "meta"
    assert moved["labels"]["click"].device.type == "meta"


def test_batched_mlps_with_frozen_layers_give_gradients_only_where_asked() -> None:
    torch.manual_seed(0)
    block = BatchedMLPs(E, F, [8, 4], out_dim=2)
    stacks = reference(block)
    block.weights[1].requires_grad_(False)
    block.biases[0].requires_grad_(False)
    x = torch.randn(B, F, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    (block(x) ** 2).sum().backward()
    (torch.stack([s(x_ref) for s in stacks]) ** 2).sum().backward()
    assert block.weights[1].grad is None and block.biases[0].grad is None
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(block.weights[0].grad[1], stacks[1][0].weight.grad.t())


@pytest.mark.parametrize("shared", [True, False])
def test_batched_mlps_with_batch_norm_match_linear_batchnorm_relu_stacks(shared):
    torch.manual_seed(0)
    dims = [8, 4]
    block = BatchedMLPs(E, F, dims, out_dim=2, batch_norm=True)
    with torch.no_grad():  # affine parameters other than the 1 / 0 they start at
        for norm in block.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    stacks = reference(block)
    x = torch.randn(16, F) if shared else torch.randn(E, 16, F)
    x_block, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()

    out = block(x_block)  # training mode: batch statistics
    expected = torch.stack([s(xi) for s, xi in zip(stacks, [x_ref] * E if shared else x_ref)])
    torch.testing.assert_close(out, expected)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_block.grad, x_ref.grad)
    for e, stack in enumerate(stacks):
        linears = [m for m in stack if isinstance(m, nn.Linear)]
        norms = [m for m in stack if isinstance(m, nn.BatchNorm1d)]
        for w, linear in zip(block.weights, linears):
            torch.testing.assert_close(w.grad[e], linear.weight.grad.t())
        for i, norm in enumerate(norms):
            h = dims[i]
            torch.testing.assert_close(
                block.norms[i].weight.grad[e * h : (e + 1) * h], norm.weight.grad
            )
            torch.testing.assert_close(
                block.norms[i].running_mean[e * h : (e + 1) * h], norm.running_mean
            )
            torch.testing.assert_close(
                block.norms[i].running_var[e * h : (e + 1) * h], norm.running_var
            )

    block.eval()  # running statistics
    for s in stacks:
        s.eval()
    with torch.no_grad():
        expected = torch.stack([s(xi) for s, xi in zip(stacks, [x] * E if shared else x)])
        torch.testing.assert_close(block(x), expected)
    with pytest.raises(ValueError, match="batch_norm"):
        block.expert(0)


def test_mlp_layers_in_order_with_an_optional_output_layer_and_final_relu() -> None:
    kinds = lambda m: [type(x).__name__ for x in m]  # noqa: E731
    assert kinds(MLP(4, [8, 6], dropout=0.1)) == ["Linear", "ReLU", "Dropout"] * 2
    assert kinds(MLP(4, [8], out_dim=2)) == ["Linear", "ReLU", "Linear"]
    assert kinds(MLP(4, [], out_dim=2, final_activation=True)) == ["Linear", "ReLU"]
    assert MLP(4, [8, 6]).output_dim == 6 and MLP(4, [8], out_dim=2).output_dim == 2
    out = MLP(4, [8], out_dim=3, final_activation=True)(torch.randn(5, 4))  # (B, 3)
    assert out.shape == (5, 3) and (out >= 0).all()


def test_task_towers_read_one_shared_input_or_one_input_per_task() -> None:
    torch.manual_seed(0)
    towers = TaskTowers(["click", "like"], 4, [8], dropout=0.0)
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    shared = towers(x)
    assert list(shared) == ["click", "like"] and shared["click"].shape == (5,)
    per_task = towers({"click": x, "like": y})
    torch.testing.assert_close(per_task["click"], shared["click"])
    torch.testing.assert_close(per_task["like"], towers["like"](y).squeeze(-1))
    # the same weights, in the same order, as one MLP per task built one after another
    torch.manual_seed(0)
    mlps = [MLP(4, [8], out_dim=1) for _ in range(2)]
    for tower, mlp in zip(towers.values(), mlps):
        for a, b in zip(tower.parameters(), mlp.parameters()):
            assert torch.equal(a, b)


def test_embedding_tables_stack_the_named_features_and_pad_where_asked() -> None:
    tables = EmbeddingTables({"age": 5, "hist": 7}, 3, padding={"hist"})
    assert tables["hist"].padding_idx == 0 and tables["age"].padding_idx is None
    batch = {"age": torch.tensor([1, 4]), "hist": torch.tensor([0, 6]), "other": torch.zeros(2)}
    out = tables(batch)  # (B, F, D)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out[:, 1], tables["hist"](batch["hist"]))
    assert not out[0, 1].any()  # the padding row


def test_masked_mean_skips_masked_positions_and_gives_zeros_for_an_empty_row() -> None:
    values = torch.arange(12.0).view(2, 3, 2)  # (B, L, D)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor([[2.0, 3.0], [0.0, 0.0]]))
