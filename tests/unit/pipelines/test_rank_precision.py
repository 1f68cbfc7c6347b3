"""`trainer.precision=bf16-mixed` trains in bf16 products but evaluates in float32."""

from __future__ import annotations

from functools import partial

import torch

from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.mmoe import MMoE
from recolab.pipelines.rank import RankModule
from tests.unit.models.rank.helpers import SCHEMA, tiny_batch


def test_evaluation_scores_in_float32_inside_lightnings_bf16_autocast() -> None:
    # Lightning runs validation and test steps inside the precision plugin's autocast. bf16
    # outputs keep 8 significant bits: nearby scores would tie and AUC would measure the
    # rounding. The collected outputs must be the float32 model's, bit for bit.
    torch.manual_seed(0)
    model = MMoE(
        SCHEMA,
        embedding=partial(FeatureEmbedding, embedding_dim=4),
        num_experts=2,
        expert_dims=[16],
        tower_dims=[8],
    )
    module = RankModule(model, SCHEMA).eval()
    features = tiny_batch(batch=256)
    batch = {
        "features": features,
        "labels": {t: torch.zeros(256) for t in SCHEMA.task_names},
        "meta": {},
    }
    with torch.no_grad():
        exact = model(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = model(features)
            module.on_validation_epoch_start()
            module.validation_step(batch, 0)
    collected = module._rows[0]
    for task in SCHEMA.task_names:
        assert rounded[task].dtype == torch.bfloat16
        assert not torch.equal(rounded[task].float(), exact[task])  # the rounding is real
        assert collected[f"out/{task}"].dtype == torch.float32
        assert torch.equal(collected[f"out/{task}"], exact[task]), task
