"""Pipeline configs stored before optimizers and samplers were config nodes, translated.

A checkpoint (or a logged model) keeps the module config it was trained with, and `recolab
evaluate` (or `recolab.serving`) rebuilds the module from it. Configs written before issue 21 hold

- `module.optimizer: adam | adagrad` and `module.optimizer_kwargs: {...} | null` (RankModule), or
  no optimizer at all (RecallModule, which always used torch's default Adam);
- `module.sampler: {_target_: recolab.pipelines.recall.Sampler, kind: in_batch | mixed, ...}`.

`pipeline_settings` turns those into today's nodes (`module.optimizer: {_target_:
torch.optim.Adam, _partial_: true, ...}`, `module.sampler: {_target_:
recolab.samplers.InBatchSoftmax, ...}`), the one place that knows the old keys; it is one of
`recolab.checkpoint_config.UPGRADES`, applied to every stored config before it is checked. The
sampler's checkpointed estimate moved too (`frequency.*` -> `sampler.frequency.*`):
`RecallModule` renames it as it loads a state dict.

Imports nothing but the standard library.
"""

from __future__ import annotations

import copy
from typing import Any

#: The old `module.optimizer` names.
OLD_OPTIMIZERS = {"adam": "torch.optim.Adam", "adagrad": "torch.optim.Adagrad"}
#: The old sampler target, and each old `kind`'s new target and the fields it takes.
OLD_SAMPLER = "recolab.pipelines.recall.Sampler"
_IN_BATCH = ("temperature", "similarity", "mask_accidental_hits", "logq", "alpha")
_IN_BATCH += ("num_hashes", "num_buckets")
SAMPLERS = {
    "in_batch": ("recolab.samplers.InBatchSoftmax", _IN_BATCH),
    "mixed": (
        "recolab.samplers.MixedNegativeSoftmax",
        (*_IN_BATCH, "num_negatives", "distribution", "power"),
    ),
}
RECALL = "recolab.pipelines.recall.RecallModule"
RANK = "recolab.pipelines.rank.RankModule"
#: The metric sets each pipeline computed before they were declared by config (`module.metrics`).
OLD_METRICS = {
    RANK: {
        "binary": ["auc", "logloss", "ece", "gauc"],
        "regression": ["mae", "rmse", "xauc", "xgauc"],
    },
    RECALL: ["recall", "ndcg", "hit_rate", "mrr", "retrieved_popularity"],
}


def pipeline_settings(stored: dict[str, Any]) -> list[str]:
    """Translate the stored config's old `module` keys in place; returns what moved
    (`old -> new`), nothing for a config of today."""
    module = stored.get("module")
    if not isinstance(module, dict):
        return []
    moved = []
    optimizer = module.get("optimizer")
    if isinstance(optimizer, str) or "optimizer_kwargs" in module:
        name = optimizer if isinstance(optimizer, str) else "adam"
        kwargs = module.pop("optimizer_kwargs", None) or {}
        module["optimizer"] = {
            "_target_": OLD_OPTIMIZERS.get(name, name),
            "_partial_": True,
            **kwargs,
        }
        moved.append(
            f"module.optimizer={name}, module.optimizer_kwargs={kwargs} -> "
            f"module.optimizer._target_={module['optimizer']['_target_']}"
        )
    elif module.get("_target_") == RECALL and optimizer is None:
        # The recall pipeline's Adam was torch's default implementation, never fused.
        module["optimizer"] = {"_target_": "torch.optim.Adam", "_partial_": True, "foreach": None}
        moved.append("(no module.optimizer) -> module.optimizer._target_=torch.optim.Adam")
    if "metrics" not in module and module.get("_target_") in OLD_METRICS:
        module["metrics"] = copy.deepcopy(OLD_METRICS[module["_target_"]])
        moved.append(f"(no module.metrics) -> module.metrics={module['metrics']}")
    sampler = module.get("sampler")
    if isinstance(sampler, dict) and sampler.get("_target_", OLD_SAMPLER) == OLD_SAMPLER:
        kind = sampler.get("kind", "in_batch")
        target, fields = SAMPLERS[kind]
        module["sampler"] = {
            "_target_": target,
            **{k: v for k, v in sampler.items() if k in fields},
        }
        moved.append(f"module.sampler (kind={kind}) -> module.sampler._target_={target}")
    return moved
