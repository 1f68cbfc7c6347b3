"""Customized Gate Control (CGC) and Progressive Layered Extraction (PLE) (Tang, Liu, Zhao and
Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020).

CGC (the paper's Section 4.1): every task k owns `num_task_experts` experts and all tasks share
`num_shared_experts` experts. Task k's gate is a softmax over its own and the shared experts
only, `g^k(x) = w^k(x) S^k(x)` with `w^k(x) = Softmax(W^k_g x)` and `S^k(x)` the stacked outputs
of task k's and the shared experts, so a task never reads another task's specific experts: the
specific experts are where the seesaw between tasks is kept out.

PLE (Section 4.2) stacks extraction layers. Layer j has the same experts and task gates as CGC,
but task k's experts and gate read task k's output of layer j-1, and the shared experts read the
shared output of layer j-1. Every layer but the last also has a shared gate, a softmax over
*all* experts of the layer (every task's and the shared ones), whose mixture is the shared input
of layer j+1: that is how PLE lets tasks exchange information progressively. The first layer's
inputs are all the embedded features; each task's tower reads the last layer's output for that
task. PLE with one level is CGC.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from recolab.data.schema import Schema
from recolab.models.blocks import (
    BatchedMLPs,
    EmbeddingFactory,
    FeatureEmbedding,
    TaskTowers,
    softmax_last,
)
from recolab.params import Count, Count0, Layers, Rate, Widths, checked


class LevelGates(NamedTuple):
    """One extraction layer's gate weights: per task (B, E_task + E_shared), shared (B, T * E_task + E_shared) or None."""

    tasks: dict[str, torch.Tensor]
    shared: torch.Tensor | None


class ExtractionLayer(nn.Module):
    """One CGC layer: task-specific and shared experts, a gate per task, and optionally a shared gate.

    Args:
        tasks: task names, T of them.
        in_dim: width of the layer's inputs.
        num_task_experts: experts owned by each task.
        num_shared_experts: experts shared by all tasks.
        expert_dims: hidden widths of each expert MLP (the last is the output width H).
        dropout: dropout after the experts' hidden layers.
        shared_gate: build the shared gate over all experts (every PLE layer but the last).
    """

    def __init__(
        self,
        tasks: list[str],
        in_dim: int,
        *,
        num_task_experts: int,
        num_shared_experts: int,
        expert_dims: list[int],
        dropout: float,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)

        def experts(n: int) -> BatchedMLPs | None:
            return BatchedMLPs(n, in_dim, expert_dims, dropout=dropout) if n else None

        # Each group of experts (a task's, the shared ones) is one block; `expert(e)` gives one.
        self.task_experts = nn.ModuleDict(
            {t: e for t in self.tasks if (e := experts(num_task_experts)) is not None}
        )
        self.shared_experts = experts(num_shared_experts)
        self.task_gates = nn.ModuleDict(
            {t: nn.Linear(in_dim, num_task_experts + num_shared_experts) for t in self.tasks}
        )
        num_all = len(self.tasks) * num_task_experts + num_shared_experts
        self.shared_gate = nn.Linear(in_dim, num_all) if shared_gate else None
        self.output_dim = expert_dims[-1]

    def forward(
        self, task_inputs: dict[str, torch.Tensor], shared_input: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, LevelGates]:
        """Task inputs {task: (B, F)} and the shared input (B, F) -> task outputs {task: (B, H)}, shared output or None, gates."""
        shared = [] if self.shared_experts is None else [self.shared_experts(shared_input)]
        specific = {t: [e(task_inputs[t])] for t, e in self.task_experts.items()}  # (E_task, B, H)
        outputs, gates = {}, {}
        for t in self.tasks:
            gate = softmax_last(self.task_gates[t](task_inputs[t]))  # (B, E_task + E_shared)
            outputs[t] = mix(gate, [*specific.get(t, []), *shared])  # (B, H)
            gates[t] = gate
        if self.shared_gate is None:
            return outputs, None, LevelGates(gates, None)
        shared_gate = softmax_last(self.shared_gate(shared_input))  # (B, T*E_task + E_shared)
        every = [g for t in self.tasks for g in specific.get(t, [])] + shared
        return outputs, mix(shared_gate, every), LevelGates(gates, shared_gate)


def mix(gate: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """A gated sum of experts: gate (B, E) over the experts of `groups` [(E_i, B, H), ...], in order -> (B, H)."""
    experts = groups[0] if len(groups) == 1 else torch.cat(groups)  # (E, B, H)
    return (gate.t().unsqueeze(-1) * experts).sum(0)  # (B, H)


class PLE(nn.Module):
    """Args:
    schema, embedding, tower_dims, dropout: as every ranker takes them (`recolab.models.rank`).
    num_levels: extraction layers; 1 is CGC.
    num_task_experts: experts owned by each task, per layer.
    num_shared_experts: experts shared by all tasks, per layer.
    expert_dims: hidden widths of each expert MLP (the last is the expert's output width H).
    """

    @checked
    def __init__(
        self,
        schema: Schema,
        *,
        embedding: EmbeddingFactory = FeatureEmbedding,
        num_levels: Count = 2,
        num_task_experts: Count0 = 2,
        num_shared_experts: Count0 = 2,
        expert_dims: Layers = (128, 64),
        tower_dims: Widths = (32,),
        dropout: Rate = 0.0,
    ) -> None:
        super().__init__()
        if num_task_experts + num_shared_experts < 1:
            raise ValueError(
                "num_task_experts and num_shared_experts must give each task at least one expert, "
                f"got {num_task_experts} and {num_shared_experts}"
            )
        if num_levels > 1 and num_shared_experts < 1:
            raise ValueError(
                f"num_levels={num_levels} needs num_shared_experts >= 1: the inner layers pass information "
                "between tasks only through the shared experts of the next layer"
            )
        self.tasks = schema.task_names
        self.embed = embedding(schema)
        dims = [self.embed.output_dim] + [expert_dims[-1]] * (num_levels - 1)
        self.levels = nn.ModuleList(
            [
                ExtractionLayer(
                    self.tasks,
                    d_in,
                    num_task_experts=num_task_experts,
                    num_shared_experts=num_shared_experts,
                    expert_dims=list(expert_dims),
                    dropout=dropout,
                    shared_gate=level < num_levels - 1,
                )
                for level, d_in in enumerate(dims)
            ]
        )
        self.towers = TaskTowers(self.tasks, expert_dims[-1], tower_dims, dropout=dropout)

    def _extract(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[LevelGates]]:
        x = self.embed(features)  # (B, F)
        task_inputs, shared_input = dict.fromkeys(self.tasks, x), x
        gates = []
        for level in self.levels:
            task_inputs, shared_input, level_gates = level(
                task_inputs, shared_input
            )  # {task: (B, H)}, (B, H) or None
            gates.append(level_gates)
        return task_inputs, gates

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        task_outputs, _ = self._extract(features)  # {task: (B, H)}
        return self.towers(task_outputs)  # {task: (B,)}

    def gate_weights(self, features: dict[str, torch.Tensor]) -> list[LevelGates]:
        """Each layer's gate weights, for inspecting how tasks share experts (see `LevelGates`)."""
        return self._extract(features)[1]


class CGC(PLE):
    """PLE with a single extraction layer: task gates over own and shared experts, no shared gate.

    Takes PLE's arguments but `num_levels`.
    """

    @checked
    def __init__(
        self,
        schema: Schema,
        *,
        embedding: EmbeddingFactory = FeatureEmbedding,
        num_task_experts: Count0 = 2,
        num_shared_experts: Count0 = 2,
        expert_dims: Layers = (128, 64),
        tower_dims: Widths = (32,),
        dropout: Rate = 0.0,
    ) -> None:
        super().__init__(
            schema,
            embedding=embedding,
            num_levels=1,
            num_task_experts=num_task_experts,
            num_shared_experts=num_shared_experts,
            expert_dims=expert_dims,
            tower_dims=tower_dims,
            dropout=dropout,
        )
