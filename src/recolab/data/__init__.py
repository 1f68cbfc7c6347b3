"""Data: schema, columnar batches, data modules, sources."""
