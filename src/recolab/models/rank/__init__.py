"""Multi-task rankers. Each maps a batch's features to one output per task.

Contract (every ranker): `forward(features) -> dict[task name, Tensor (B,)]`, a logit for a
binary task and a prediction of the transformed label for a regression task. Losses, heads and
metrics live in `recolab.pipelines.rank`.
"""
