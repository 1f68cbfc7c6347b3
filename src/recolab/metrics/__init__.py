"""Exact offline metrics as pure functions of arrays (numpy arrays or torch tensors).

Each function states its tie policy and weighting; definitions are in DESIGN.md section 3.
This package imports nothing else from recolab.
"""

from recolab.metrics.calibration import ece, predicted_observed_ratio, reliability_table
from recolab.metrics.classification import (
    GroupedMetric,
    PerGroup,
    auc,
    gauc,
    gauc_details,
    logloss,
    weighted_mean,
)
from recolab.metrics.regression import mae, rmse, xauc, xgauc, xgauc_details
from recolab.metrics.retrieval import (
    PerUser,
    RetrievalMetrics,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    ranks_of_targets,
    recall_at_k,
    retrieval_details,
)

__all__ = [
    "GroupedMetric",
    "PerGroup",
    "PerUser",
    "RetrievalMetrics",
    "auc",
    "ece",
    "gauc",
    "gauc_details",
    "hit_rate_at_k",
    "logloss",
    "mae",
    "mrr",
    "ndcg_at_k",
    "predicted_observed_ratio",
    "ranks_of_targets",
    "recall_at_k",
    "reliability_table",
    "retrieval_details",
    "rmse",
    "weighted_mean",
    "xauc",
    "xgauc",
    "xgauc_details",
]
