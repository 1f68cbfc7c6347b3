"""LightningModules: a model plus its loss, optimizer, evaluation and metric accumulation."""
