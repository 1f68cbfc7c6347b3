"""The MMoE paper's synthetic data: two regression tasks whose relatedness is one number.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts"
(KDD 2018), Section 4.2. Given the input dimension d, a scale c and a task correlation p in
[-1, 1]:

1. u1, u2: two orthogonal unit vectors in R^d;
2. w1 = c u1,  w2 = c (p u1 + sqrt(1 - p^2) u2), so that cos(w1, w2) = p;
3. x ~ N(0, I_d), one draw per row;
4. y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k,  eps_k ~ N(0, 0.01).

The sine terms make the tasks non-linear, so the Pearson correlation of the labels is not p
itself but falls with it (the paper's Figure 2 plots model quality against p). Every draw that
defines the world (u1, u2, alpha, beta) comes from `world_seed`; only p changes between the
worlds of a correlation sweep, so their differences are the task relatedness alone. The rows
(x, noise) come from `row_seed`, and the train/val/test split from `split_seed`: training seeds
change the model's initialization and batch order, never the data.

Columns: `x0` ... `x{d-1}` (dense features), `y1`, `y2` (regression labels), `gt_y1`, `gt_y2`
(the noise-free values, for the oracle: their RMSE against the labels is the noise floor).
The alpha and beta draws are standard normal here: the paper calls them "given parameters" that
shape the sinusoids and does not give their values in its text.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from annotated_types import Ge

from recolab.data.datamodule import Fractions, RankDataModule
from recolab.data.source import split_column
from recolab.params import Correlation, Count0, NonNegative, Positive, checked

SPLIT_COLUMN = "split"


def world_parameters(
    *, dim: int, correlation: float, scale: float = 1.0, num_sines: int = 10, world_seed: int = 0
) -> dict[str, np.ndarray]:
    """Steps 1-2 and the sine parameters: `w1`, `w2` (d,), `alpha`, `beta` (m,).

    u1, u2 and the sine parameters depend on `world_seed` only, so worlds that differ in
    `correlation` share them: w1 is the same vector in all of them.
    """
    world = np.random.default_rng(world_seed)
    u, _ = np.linalg.qr(world.standard_normal((dim, 2)))  # (d, 2) orthonormal columns
    u1, u2 = u[:, 0], u[:, 1]
    return {
        "w1": scale * u1,
        "w2": scale * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2),
        "alpha": world.standard_normal(num_sines),
        "beta": world.standard_normal(num_sines),
    }


def make_tables(
    *,
    num_rows: int,
    dim: int,
    correlation: float,
    scale: float = 1.0,
    num_sines: int = 10,
    noise_std: float = 0.1,
    world_seed: int = 0,
    row_seed: int = 1,
) -> dict[str, np.ndarray]:
    """The columns of one world (see the module docstring), as numpy arrays."""
    params = world_parameters(
        dim=dim, correlation=correlation, scale=scale, num_sines=num_sines, world_seed=world_seed
    )
    rows = np.random.default_rng(row_seed)
    x = rows.standard_normal((num_rows, dim)).astype(np.float32)  # (N, d)
    out: dict[str, np.ndarray] = {f"x{j}": x[:, j] for j in range(dim)}
    for k in ("1", "2"):
        z = x.astype(np.float64) @ params[f"w{k}"]  # (N,)
        truth = z + np.sin(np.outer(z, params["alpha"]) + params["beta"]).sum(axis=1)  # (N,)
        out[f"gt_y{k}"] = truth.astype(np.float32)
        out[f"y{k}"] = (truth + rows.normal(0.0, noise_std, num_rows)).astype(np.float32)
    return out


class MMoESyntheticDataModule(RankDataModule):
    """The MMoE paper's synthetic regression world (see the module docstring).

    Args:
        num_rows: rows in the world (split into train / val / test).
        dim: d, the input dimension (the paper: 100).
        correlation: p, the cosine of the two tasks' weight vectors, in [-1, 1].
        scale: c, the weight vectors' norm.
        num_sines: m, the sine terms per label (the paper: 10).
        noise_std: the label noise's standard deviation (the paper's N(0, 0.01): 0.1).
        world_seed: seeds u1, u2, alpha and beta (the same across a correlation sweep).
        row_seed: seeds x and the noise.
        fractions: train / val / test shares of a permutation seeded with `split_seed`.
        **kwargs: `RankDataModule` arguments; `dense` defaults to every x column, and `tasks`,
            `meta`, `oracle` to the two regression tasks with their noise-free values.
    """

    @checked
    def __init__(
        self,
        *,
        num_rows: Annotated[int, Ge(10)] = 100_000,
        dim: Annotated[int, Ge(2)] = 100,
        correlation: Correlation = 0.5,
        scale: Positive = 1.0,
        num_sines: Count0 = 10,
        noise_std: NonNegative = 0.1,
        world_seed: Count0 = 0,
        row_seed: Count0 = 1,
        fractions: Fractions = (0.8, 0.1, 0.1),
        split_seed: Count0 = 0,
        **kwargs: Any,
    ) -> None:
        if "split" in kwargs:
            raise ValueError(
                "data.split is not used by the MMoE synthetic data: set data.fractions and data.split_seed"
            )
        fractions = [float(f) for f in fractions]
        if min(fractions) <= 0:
            raise ValueError(f"data.fractions must give every split a share > 0; got {fractions}")
        kwargs.setdefault("sparse", [])
        if not kwargs.get("dense"):
            kwargs["dense"] = [f"x{j}" for j in range(dim)]
        kwargs.setdefault(
            "tasks", [{"name": "y1", "kind": "regression"}, {"name": "y2", "kind": "regression"}]
        )
        kwargs.setdefault("meta", ["gt_y1", "gt_y2"])
        kwargs.setdefault("oracle", {"y1": "gt_y1", "y2": "gt_y2"})
        super().__init__(split={"kind": "column", "column": SPLIT_COLUMN}, **kwargs)
        world = {
            "num_rows": int(num_rows),
            "dim": int(dim),
            "correlation": float(correlation),
            "scale": float(scale),
            "num_sines": int(num_sines),
            "noise_std": float(noise_std),
            "world_seed": int(world_seed),
            "row_seed": int(row_seed),
        }
        self.source = MMoESyntheticSource(world, fractions, split_seed)


class MMoESyntheticSource:
    """The world's columns (`make_tables(**world)`) with a `split` column (`split_column`)."""

    def __init__(self, world: dict[str, Any], fractions: list[float], split_seed: int) -> None:
        self.world, self.fractions, self.split_seed = world, fractions, split_seed

    def prepare(self) -> None:
        """Nothing to convert or cache: `load` generates the rows in memory (a second or two)."""

    def load(self, required: list[str]) -> tuple[str, pa.Table]:
        columns = make_tables(**self.world)
        split = split_column(self.world["num_rows"], self.fractions, self.split_seed)
        table = pa.table({**columns, SPLIT_COLUMN: split})
        where = "<mmoe synthetic " + ", ".join(f"{k}={v}" for k, v in self.world.items()) + ">"
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{where}: data lists column(s) {missing} that this world does not have; it has "
                f"x0..x{self.world['dim'] - 1}, y1, y2, gt_y1, gt_y2"
            )
        return where, table.select(required)
