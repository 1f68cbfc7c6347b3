"""Multi-task rankers. Each maps a batch's features to one output per task.

Contract (every ranker):

- `__init__(schema, *, embedding=FeatureEmbedding, <its own>, tower_dims, dropout)`: `schema`
  (`recolab.data.schema.Schema`) gives the features and tasks; `embedding` builds the input from
  the schema, (B, F) (a `recolab.models.blocks.EmbeddingFactory`: the config's `_partial_` node
  `model.embedding`, so that `model.embedding.embedding_dim=8` or `model.embedding.batch_norm=true`
  reach every ranker alike); `tower_dims` are the hidden widths of each task's tower
  (`recolab.models.blocks.TaskTowers`); `dropout` follows every hidden layer.
- `forward(features) -> dict[task name, Tensor (B,)]`, a logit for a binary task and a prediction
  of the transformed label for a regression task. Losses, heads and metrics live in
  `recolab.pipelines.rank`.

A new ranker is one file here, one `configs/model/<name>.yaml` and its test (which calls
`tests/unit/models/rank/helpers.check_model`): it builds `self.embed = embedding(schema)`, its own
layers, and `self.towers = TaskTowers(...)`, in the order its parameters should be drawn.
"""
