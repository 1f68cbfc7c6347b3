"""The block library every model builds on.

- `MLP`, the one MLP (rankers' towers and bottoms, recallers' towers and ReLU layers, heads);
  `TaskTowers`, one MLP per task, the end of every ranker; `BatchedMLPs`, E same-shaped MLPs run
  as one (the experts of MMoE, CGC and PLE);
- `EmbeddingTables`, the one set of id embedding tables (one `nn.Embedding` per named feature),
  with `masked_mean` to pool a padded sequence of them; `FeatureEmbedding`, a schema's features
  as one vector per row, the collaborator every ranker is given (`EmbeddingFactory`), with two
  optional parts it builds and runs: a history pooling (`recolab.models.din`) and an input
  interaction (`recolab.models.cross`).

Shapes: B batch, L sequence, D embedding, F features, H hidden, E experts, T tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import torch
from torch import Tensor, nn

from recolab.data.schema import Schema
from recolab.params import Count, checked


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """`x.softmax(-1)`, computed over a transposed view (the same values).

    torch's CPU softmax over the last dimension vectorizes along that dimension, which is
    slow when it is as short as a gate's few experts; over the first dimension of the
    transposed (E, rows) view it vectorizes along the rows instead (about 2.5x faster forward
    and backward for (2048, 3, 4) gates, experiments/bench/speed.md).
    """
    rows = x.reshape(-1, x.shape[-1])  # (rows, E)
    return rows.t().softmax(0).t().view(x.shape)


class MLP(nn.Sequential):
    """Linear -> ReLU (-> Dropout) for each hidden width, then an optional output layer.

    Args:
        in_dim: input width.
        dims: hidden widths, in order; empty for the output layer alone.
        dropout: dropout after each hidden activation.
        out_dim: a final linear layer's width, or None.
        final_activation: a ReLU after that output layer too (MIND's "several ReLU layers").
    """

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        *,
        dropout: float = 0.0,
        out_dim: int | None = None,
        final_activation: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        for h in dims:
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
            in_dim = out_dim
            if final_activation:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.output_dim = in_dim


class TaskTowers(nn.ModuleDict):
    """One tower per task, `MLP(in_dim, dims, out_dim=1)`: the output end of every ranker.

    Args:
        tasks: task names, T of them (the towers' keys, in order).
        in_dim: width of each tower's input.
        dims: hidden widths of each tower (a final linear layer gives the output).
        dropout: dropout after each hidden activation.
    """

    def __init__(
        self, tasks: Sequence[str], in_dim: int, dims: Sequence[int], *, dropout: float = 0.0
    ) -> None:
        super().__init__({t: MLP(in_dim, dims, dropout=dropout, out_dim=1) for t in tasks})

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """(B, in_dim) read by every tower, or {task: (B, in_dim)} -> {task: (B,)}."""
        shared = isinstance(inputs, Tensor)
        return {t: tower(inputs if shared else inputs[t]).squeeze(-1) for t, tower in self.items()}


class BatchedMLPs(nn.Module):
    """E MLPs of the same shape, computed together: the experts of a mixture, or one tower per task.

    It computes exactly what E separate `MLP(in_dim, dims, dropout=dropout, out_dim=out_dim)`s
    compute, stacked. Run one after another, those are E small matrix products per layer, each
    with its own dispatch, bias add and activation, then a stack; here each layer is one batched
    matrix product over all E (experts in one (E, B, H) tensor, which is also the layout the
    next layer and the gates read), and each ReLU one op over all of them
    (experiments/bench/speed.md measures the difference).

    Layer l's weights are one (E, d_in, d_out) tensor, expert e's `nn.Linear` weight transposed,
    and its biases one (E, d_out) tensor. Each MLP's layers are initialized as `nn.Linear`
    initializes itself, drawing in the same order as E separate `MLP`s built one after another,
    so under the same seed the weights equal theirs (`expert(e)` gives MLP e back as an `MLP`).

    With `batch_norm`, each hidden layer is Linear -> BatchNorm1d -> ReLU (-> Dropout), as in
    torch-rechub's MLPs (Ioffe and Szegedy, ICML 2015): one `nn.BatchNorm1d` over the E MLPs'
    units of a layer, so each MLP's units keep their own statistics and affine parameters.

    Args:
        num: E, the number of MLPs (>= 1).
        in_dim: input width.
        dims: hidden widths, in order (Linear -> ReLU (-> Dropout) each).
        dropout: dropout after each hidden activation.
        out_dim: a final linear layer's width (no activation), or None.
        batch_norm: batch normalization between each hidden layer's Linear and its ReLU.
    """

    def __init__(
        self,
        num: int,
        in_dim: int,
        dims: list[int] | tuple[int, ...],
        *,
        dropout: float = 0.0,
        out_dim: int | None = None,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num < 1:
            raise ValueError(f"BatchedMLPs needs at least one MLP, got num={num}")
        if not dims and out_dim is None:
            raise ValueError("BatchedMLPs needs at least one layer: dims is empty and no out_dim")
        self.num = num
        self.dims = [in_dim, *dims] + ([] if out_dim is None else [out_dim])
        self.hidden = len(dims)  # layers followed by ReLU (and dropout); a last one may not be
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(num, d_in, d_out)) for d_in, d_out in self._layers()]
        )
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.empty(num, d_out)) for _, d_out in self._layers()]
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.norms = nn.ModuleList([nn.BatchNorm1d(num * h) for h in dims]) if batch_norm else None
        self.output_dim = self.dims[-1]
        self.reset_parameters()

    def _layers(self) -> list[tuple[int, int]]:
        return list(zip(self.dims[:-1], self.dims[1:]))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """`nn.Linear.reset_parameters` for each MLP's layers, MLP by MLP, in that order."""
        for e in range(self.num):
            for w, b, (d_in, d_out) in zip(self.weights, self.biases, self._layers()):
                weight = torch.empty(d_out, d_in)  # nn.Linear's layout: (out, in)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # U(-1/sqrt(d_in), 1/sqrt(d_in))
                w[e].copy_(weight.t())
                b[e].uniform_(-1 / math.sqrt(d_in), 1 / math.sqrt(d_in))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Also load a state saved when the E MLPs were separate `MLP`s (`<prefix><e>.<i>.weight`,
        recolab's MMoE/CGC/PLE checkpoints before the experts were batched): their Linear layers,
        in order, become the stacked `weights.<l>` (transposed) and `biases.<l>`."""
        if f"{prefix}weights.0" not in state_dict and f"{prefix}0.0.weight" in state_dict:
            for e in range(self.num):
                old = sorted(
                    (int(k[len(f"{prefix}{e}.") :].split(".")[0]), k)
                    for k in list(state_dict)
                    if k.startswith(f"{prefix}{e}.") and k.endswith(".weight")
                )
                for layer, (_, key) in enumerate(old):
                    state_dict.setdefault(f"{prefix}weights.{layer}", []).append(
                        state_dict.pop(key).t()
                    )
                    state_dict.setdefault(f"{prefix}biases.{layer}", []).append(
                        state_dict.pop(key.removesuffix("weight") + "bias")
                    )
            for key in [
                k for k in state_dict if k.startswith((f"{prefix}weights.", f"{prefix}biases."))
            ]:
                if isinstance(state_dict[key], list):
                    state_dict[key] = torch.stack(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim), shared by all, or (E, B, in_dim), one input each -> (E, B, output_dim).

        MLP e's output is `[e]`. Without dropout in training, batch normalization or compilation,
        the block runs as `_BatchedMLPsFunction` (the same products, a leaner backward); otherwise
        layer by layer under autograd. Under autocast (`trainer.precision=bf16-mixed`) the
        Function runs on the input and parameters cast to autocast's dtype, the products autocast
        would run in it; a shared (B, in_dim) input is cast once, not once per MLP as autocast
        casts an expanded view (an (E, B, in_dim) copy forward and a float32 one backward). The
        output is in that dtype; the casts' backward returns float32 gradients to the float32
        parameters.
        """
        if not (
            (self.dropout is not None and self.training)
            or self.norms is not None
            or torch.compiler.is_compiling()
        ):
            params = [*self.weights, *self.biases]
            device = x.device.type
            if torch.is_autocast_enabled(device):
                dtype = torch.get_autocast_dtype(device)
                x, params = x.to(dtype), [p.to(dtype) for p in params]
                with torch.autocast(device, enabled=False):
                    return _BatchedMLPsFunction.apply(x, self.hidden, *params)
            return _BatchedMLPsFunction.apply(x, self.hidden, *params)
        if x.dim() == 2:
            x = x.expand(self.num, *x.shape)  # (E, B, in_dim), a view: no copy
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)  # (E, B, d_out)
            if i < self.hidden:
                if self.norms is not None:  # over (B, E * d_out): each MLP's units apart
                    num, rows, width = h.shape
                    flat = h.transpose(0, 1).reshape(rows, num * width)
                    h = self.norms[i](flat).view(rows, num, width).transpose(0, 1)
                h = h.relu_()
                if self.dropout is not None:
                    h = self.dropout(h)
        return h

    def expert(self, e: int) -> MLP:
        """MLP e as a standalone `MLP`, holding a copy of its weights (for inspection and tests);
        without batch normalization, which an `MLP` does not have."""
        if self.norms is not None:
            raise ValueError("expert(e) has no batch normalization to copy into; batch_norm is on")
        hidden, out = self.dims[1 : self.hidden + 1], self.dims[self.hidden + 1 :]
        mlp = MLP(
            self.dims[0],
            hidden,
            dropout=self.dropout.p if self.dropout is not None else 0.0,
            out_dim=out[0] if out else None,
        )
        linears = [m for m in mlp if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for linear, w, b in zip(linears, self.weights, self.biases):
                linear.weight.copy_(w[e].t())
                linear.bias.copy_(b[e])
        return mlp

    def extra_repr(self) -> str:
        return f"num={self.num}, dims={self.dims}, hidden={self.hidden}" + (
            ", batch_norm=True" if self.norms is not None else ""
        )


class _BatchedMLPsFunction(torch.autograd.Function):
    """`BatchedMLPs`' forward (no dropout) with a backward written for it.

    Autograd's backward of the layer-by-layer forward computes the same gradients, but on CPU
    it spends much of the step outside the matrix products: a shared input's gradient is formed
    as E (B, in_dim) products, stored as one (E, B, in_dim) tensor and then summed over E, and
    every ReLU's backward writes a new tensor. Here the shared input's gradient is one
    accumulating product (`addbmm`: the sum over E happens inside the product), and each ReLU's
    backward masks the incoming gradient in place. tests/unit/models/test_blocks.py checks
    outputs and gradients against separate `nn.Linear`/ReLU stacks;
    experiments/bench/speed.md measures the step.

    forward(x, hidden, *weights, *biases): x (B, d_in) shared or (E, B, d_in); weights[l]
    (E, d_l, d_l+1); biases[l] (E, d_l+1); ReLU after the first `hidden` layers.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, hidden: int, *params: torch.Tensor) -> torch.Tensor:
        n = len(params) // 2
        weights, biases = params[:n], params[n:]
        h = x.expand(weights[0].shape[0], *x.shape) if x.dim() == 2 else x
        inputs = [x]  # each layer's input (after the previous layer's ReLU)
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)  # (E, B, d_out)
            if i < hidden:
                h = h.relu_()
            inputs.append(h)
        ctx.hidden, ctx.num_layers = hidden, n
        # The last output is kept only when a ReLU follows it (its backward needs the mask).
        ctx.save_for_backward(*inputs[: n + (hidden == n)], *weights)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n, hidden = ctx.num_layers, ctx.hidden
        saved = ctx.saved_tensors
        inputs, weights = saved[: len(saved) - n], saved[len(saved) - n :]
        g = grad
        if hidden == n:  # the last layer has a ReLU
            g = torch.ops.aten.threshold_backward(g, inputs[n], 0)
        grad_w: list[torch.Tensor | None] = [None] * n
        grad_b: list[torch.Tensor | None] = [None] * n
        grad_x = None
        for i in reversed(range(n)):
            x, w = inputs[i], weights[i]
            if ctx.needs_input_grad[2 + i]:  # (x, hidden, *weights, *biases)
                if x.dim() == 2:  # the shared input: every MLP's layer 0 reads the same (B, d_in)
                    # x^T broadcast over the MLPs, not copied; in bf16 torch's bmm would copy
                    # that strided operand for every MLP, so there x^T is made contiguous once.
                    xt = x.t() if x.dtype == torch.float32 else x.t().contiguous()
                    grad_w[i] = torch.bmm(xt.expand(len(g), *xt.shape), g)
                else:
                    grad_w[i] = torch.bmm(x.transpose(1, 2), g)
            if ctx.needs_input_grad[2 + n + i]:
                grad_b[i] = g.sum(1)
            if i > 0:  # through layer i to its input, then through the ReLU before it
                g = torch.bmm(g, w.transpose(1, 2))
                g = torch.ops.aten.threshold_backward.grad_input(g, x, 0, grad_input=g)
            elif ctx.needs_input_grad[0]:
                if x.dim() == 2:  # sum over the MLPs inside one accumulating product
                    grad_x = torch.addbmm(torch.empty_like(x), g, w.transpose(1, 2), beta=0)
                else:
                    grad_x = torch.bmm(g, w.transpose(1, 2))
        return (grad_x, None, *grad_w, *grad_b)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the sequence axis of the unmasked positions (zeros for an empty row).

    Args:
        values: (B, L, D).
        mask: (B, L) bool, True where a position counts.

    Returns:
        (B, D).
    """
    weights = mask.to(values.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (values * weights).sum(dim=1)  # (B, D)
    return total / weights.sum(dim=1).clamp_min(1.0)  # (B, D)


class EmbeddingTables(nn.ModuleDict):
    """One `nn.Embedding` table per categorical feature, by name: how every model embeds ids.

    Args:
        vocab_sizes: feature name -> vocabulary size (rows, the OOV bucket 0 included, as
            `recolab.data.schema.SparseFeature.vocab_size`).
        dim: D, the width of every table.
        sparse: sparse gradients (only the rows a batch touched; see `FeatureEmbedding`).
        padding: the names whose row 0 is padding (`nn.Embedding`'s `padding_idx=0`).
    """

    def __init__(
        self,
        vocab_sizes: Mapping[str, int],
        dim: int,
        *,
        sparse: bool = False,
        padding: Collection[str] = (),
    ) -> None:
        super().__init__(
            {
                name: nn.Embedding(
                    size, dim, padding_idx=0 if name in padding else None, sparse=sparse
                )
                for name, size in vocab_sizes.items()
            }
        )

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, F, D): the F tables' rows for `batch[name]`, each (B,) long."""
        return torch.stack([table(batch[name]) for name, table in self.items()], dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Also load a state saved when the tables sat one level down, `<prefix>tables.<name>`
        (the recallers' user features before this class: `SparseFeatureEmbeddings.tables`)."""
        for name in self:
            old = f"{prefix}tables.{name}.weight"
            if f"{prefix}{name}.weight" not in state_dict and old in state_dict:
                state_dict[f"{prefix}{name}.weight"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FeatureEmbedding(nn.Module):
    """Concatenates the schema's features into one vector per row: the input of every ranker.

    Sparse ids -> an embedding each; sequences -> the masked mean of their ids' embeddings (a
    sequence with `vocab_of` shares that feature's table, e.g. a history of item ids); dense
    values pass through (the data module standardized them). With `batch_norm`, the
    concatenated vector then goes through one `nn.BatchNorm1d` (Ioffe and Szegedy, ICML 2015):
    each of its columns normalized over the batch (running statistics in evaluation), so the
    embeddings, which start small, and the standardized dense values enter the first layer at
    one scale.

    Rankers are given it (`EmbeddingFactory`, the config's `model.embedding` node) rather than
    each building its own: `model.embedding.embedding_dim=8`, `model.embedding.batch_norm=true`.
    So are the two optional parts that change how the input is formed, which every ranker
    thereby gets by config (`+interaction=dcnv2`, `+pooling=din`; docs/architecture.md):

    - `pooling`: target attention (`recolab.models.din.TargetAttention`, DIN) in place of the
      mean for every sequence whose `vocab_of` names a sparse feature, that feature's embedding
      being the candidate; other sequences keep the mean.
    - `interaction`: a module over the concatenated (and normalized) vector, whose output the
      ranker reads instead (`recolab.models.cross.CrossNetwork`, DCN-V2); `output_dim` is then
      its width.

    Args:
        schema: the features to read; anything else in the batch is ignored.
        embedding_dim: D, the width of every embedding.
        sparse: sparse gradients for the tables (only the rows a batch touched), which need an
            optimizer that takes them (`module.optimizer._target_=torch.optim.Adagrad`). Dense by default: as fast with
            tables of tens of thousands of ids; sparse pays off with tables of millions, where a
            batch touches few rows (experiments/bench/speed.md).
        batch_norm: batch normalization of the concatenated features (`norm`); a training batch
            then needs more than one row.
        pooling: called with D for each sequence feature that has a candidate (`vocab_of`),
            giving a module (history (B, L, D), candidate (B, D), mask (B, L)) -> (B, D)
            (`pooling[name]`); None: the masked mean for every sequence.
        interaction: called with the concatenated width, giving a module (B, width) ->
            (B, output_dim) with an `output_dim` (`interaction`); None: the vector as it is.
    """

    @checked
    def __init__(
        self,
        schema: Schema,
        *,
        embedding_dim: Count = 16,
        sparse: bool = False,
        batch_norm: bool = False,
        pooling: Callable[[int], nn.Module] | None = None,
        interaction: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.schema = schema
        own = [f for f in schema.sequences if f.vocab_of is None]  # the others share a table
        self.tables = EmbeddingTables(
            {f.name: f.vocab_size for f in (*schema.sparse, *own)},
            embedding_dim,
            sparse=sparse,
            padding={f.name for f in own},
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
        self.output_dim = embedding_dim * (len(schema.sparse) + len(schema.sequences)) + len(
            schema.dense
        )
        self.norm = nn.BatchNorm1d(self.output_dim) if batch_norm else None
        if pooling is not None:
            sparse_names = {f.name for f in schema.sparse}
            targets = [f.name for f in schema.sequences if f.vocab_of in sparse_names]
            if not targets:
                raise ValueError(
                    "model.embedding.pooling: target attention needs a sequence feature whose "
                    "vocab_of names a sparse feature (the candidate, e.g. hist_items of item_id); "
                    f"the schema's sequences are {[(f.name, f.vocab_of) for f in schema.sequences]}"
                )
            if sparse:
                raise ValueError(
                    "model.embedding.pooling needs dense tables (the attention reads every "
                    "position's row); set model.embedding.sparse=false"
                )
            self.pooling = nn.ModuleDict({name: pooling(embedding_dim) for name in targets})
        else:
            self.pooling = None
        if interaction is not None:
            self.interaction = interaction(self.output_dim)
            self.output_dim = self.interaction.output_dim
        else:
            self.interaction = None

    @staticmethod
    def _lookup(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> their rows (..., D), as `table(ids)` computes them.

        Dense tables on CPU gather with `index_select`, whose backward (an `index_add`) is about
        twice as fast there as the embedding's own (which sorts the ids first); the gradients are
        the same sums. Padding rows need no special case: the sequence pooling's mask zeroes
        their gradient, as `padding_idx` would.
        """
        if table.sparse or ids.device.type != "cpu":
            return table(ids)
        return table.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, -1)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """{name: (B,) ids, (B, L) sequences, (B,) dense values} -> (B, output_dim)."""
        parts = [
            self._lookup(self.tables[f.name], features[f.name]) for f in self.schema.sparse
        ]  # each (B, D)
        for f in self.schema.sequences:
            ids = features[f.name]  # (B, L), 0 = padding
            table = self.tables[f.vocab_of or f.name]
            emb = self._lookup(table, ids)  # (B, L, D)
            if self.pooling is not None and f.name in self.pooling:
                candidate = self._lookup(table, features[f.vocab_of])  # (B, D)
                parts.append(self.pooling[f.name](emb, candidate, ids > 0))  # (B, D)
                continue
            if table.sparse:  # a sparse gradient cannot take the dense correction below
                parts.append(masked_mean(emb, ids > 0))  # (B, D)
                continue
            # The masked mean without a (B, L, D) product: sum every position, then take the
            # padding positions' rows (row 0, `pad` times) out again. Forward and gradients are
            # those of masking (row 0 gets `pad` copies of the gradient from the lookup and
            # loses them to the correction), at about half the cost.
            pad = (ids == 0).sum(1, keepdim=True).to(emb.dtype)  # (B, 1)
            total = emb.sum(1) - pad * table.weight[0]  # (B, D)
            parts.append(total / (ids.shape[1] - pad).clamp_min(1.0))
        if self.schema.dense:
            parts.append(
                torch.stack([features[f.name] for f in self.schema.dense], dim=1)
            )  # (B, F_dense)
        x = torch.cat(parts, dim=1)  # (B, F * D + F_dense)
        if self.norm is not None:
            x = self.norm(x)
        return x if self.interaction is None else self.interaction(x)  # (B, output_dim)


#: What a ranker is given to embed its input: the schema -> a `FeatureEmbedding` (the class
#: itself with its defaults, or the config's `_partial_` node `model.embedding`).
EmbeddingFactory = Callable[[Schema], FeatureEmbedding]
