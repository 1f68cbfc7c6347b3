"""Entire Space Multi-Task Model (Ma et al., "Entire Space Multi-Task Model: An Effective Approach
for Estimating Post-Click Conversion Rate", SIGIR 2018).

A conversion (z) follows a click (y). The post-click conversion rate pCVR = p(z=1 | y=1, x) is
conventionally learned on the clicked impressions only, then served over every impression: the
sample-selection bias, made worse by clicks being sparse. ESMM never fits pCVR to the clicked
subset. It factorizes the probability of a click and a conversion over every impression,

    pCTCVR = p(y=1, z=1 | x) = p(y=1 | x) * p(z=1 | y=1, x) = pCTR * pCVR,

and trains on the entire space, with a CTR tower and a CVR tower over one shared embedding:

    L = sum_i BCE(pCTR(x_i), y_i) + sum_i BCE(pCTR(x_i) * pCVR(x_i), y_i AND z_i).

pCVR is then the CVR tower's output, learned only through pCTCVR.

The pipeline (`recolab.pipelines.rank`) takes a logit per task and a BCE on it, so the model
returns the CTR tower's logit `a` for the click task and, for the click-and-convert task, the
logit of the product. With b the CVR tower's logit, both of its logs are sums of log-sigmoids,
exact where the product or its complement is tiny:

    log pCTCVR       = log s(a) + log s(b)
    log (1 - pCTCVR) = log (s(-a) + s(a) s(-b)) = logaddexp(log s(-a), log s(a) + log s(-b))

so sigmoid(ctcvr logit) = s(a) * s(b), and the pipeline's BCE on it is the paper's loss term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recolab.data.schema import Schema
from recolab.models.blocks import EmbeddingFactory, FeatureEmbedding, TaskTowers
from recolab.params import Rate, Widths, checked


def ctcvr_logit(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> torch.Tensor:
    """logit(s(a) * s(b)) for logits a, b of any (broadcastable) shape, from log-sigmoids only
    (the module docstring): finite wherever a and b are."""
    log_ctr, log_cvr = F.logsigmoid(ctr_logit), F.logsigmoid(cvr_logit)
    log_p = log_ctr + log_cvr
    log_not_p = torch.logaddexp(F.logsigmoid(-ctr_logit), log_ctr + F.logsigmoid(-cvr_logit))
    return log_p - log_not_p


class ESMM(nn.Module):
    """Args:
    schema, embedding, tower_dims, dropout: as every ranker takes them (`recolab.models.rank`);
        the CTR and the CVR tower are each an MLP of `tower_dims` over the shared embedding.
    ctr_task: the binary task of the click (y), over every impression.
    ctcvr_task: the binary task of the click and the conversion (y AND z), over every
        impression: the only task through which the CVR tower learns.
    cvr_task: where the data has a task of this name, the CVR tower's logit is also returned
        under it, so that the pipeline scores pCVR (its metrics, `module.truth`): evaluation
        only, so its weight in `data.tasks` must be 0 (the synthetic world's
        `purchase_if_clicked`, which no real log has). Where the data has none (Ali-CCP), or
        None: not returned; pCVR is always `probabilities(...)["cvr"]`.
    """

    @checked
    def __init__(
        self,
        schema: Schema,
        *,
        embedding: EmbeddingFactory = FeatureEmbedding,
        ctr_task: str = "click",
        ctcvr_task: str = "purchase",
        cvr_task: str | None = None,
        tower_dims: Widths = (128, 64, 32),
        dropout: Rate = 0.0,
    ) -> None:
        super().__init__()
        if cvr_task not in schema.task_names:
            cvr_task = None
        named = {"ctr_task": ctr_task, "ctcvr_task": ctcvr_task, "cvr_task": cvr_task}
        named = {k: v for k, v in named.items() if v is not None}
        if len(set(named.values())) < len(named):
            raise ValueError(f"model.ctr_task, ctcvr_task and cvr_task must differ, got {named}")
        for key, name in named.items():
            if name not in schema.task_names:
                raise ValueError(
                    f"model.{key}: {name!r} is not a task of the data ({schema.task_names})"
                )
            if schema.task(name).kind != "binary":
                raise ValueError(f"model.{key}: task {name!r} must be binary")
        if others := [t for t in schema.task_names if t not in named.values()]:
            raise ValueError(
                f"ESMM predicts the tasks model.ctr_task, ctcvr_task and cvr_task ({named}); "
                f"the data's task(s) {others} have no output: leave them out of data.tasks"
            )
        if cvr_task is not None and schema.task(cvr_task).weight != 0:
            raise ValueError(
                f"model.cvr_task: task {cvr_task!r} has weight {schema.task(cvr_task).weight} in "
                "data.tasks; ESMM learns pCVR only through pCTCVR, so it must have weight 0"
            )
        self.ctr_task, self.ctcvr_task, self.cvr_task = ctr_task, ctcvr_task, cvr_task
        self.embed = embedding(schema)
        self.towers = TaskTowers(("ctr", "cvr"), self.embed.output_dim, tower_dims, dropout=dropout)

    def logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The two towers' logits, {"ctr": (B,), "cvr": (B,)}, over the shared embedding."""
        return self.towers(self.embed(features))  # x: (B, F) -> {tower: (B,)}

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.logits(features)  # {ctr: (B,), cvr: (B,)}
        out = {self.ctr_task: z["ctr"], self.ctcvr_task: ctcvr_logit(z["ctr"], z["cvr"])}
        if self.cvr_task is not None:
            out[self.cvr_task] = z["cvr"]
        return out  # {task: (B,)}

    def probabilities(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"ctr", "cvr", "ctcvr"}: pCTR, pCVR and pCTCVR = pCTR * pCVR, each (B,)."""
        z = self.logits(features)
        ctr, cvr = torch.sigmoid(z["ctr"]), torch.sigmoid(z["cvr"])  # (B,), (B,)
        return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}
