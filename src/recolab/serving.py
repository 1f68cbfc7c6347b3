"""The run's model as an MLflow Model: logged with every training run, loaded and served anywhere
recolab is installed.

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")
    scores = model.predict(raw_rows)                  # a ranker: one column per task
    mlflow models serve -m runs:/<run id>/model --env-manager local   # POST /invocations

**What a caller sends** is what their log holds, not the codes a model reads. A ranker takes a
pandas DataFrame with the run's feature columns (sparse ids as in the log, dense values unscaled,
id sequences as lists, most recent last) and the meta columns its served prediction reads (D2Q's
`duration`, say; a plain ranker and PAL read none: which ones is found when the model is logged,
by scoring its input example through a dict that records what is read); the model applies the
run's vocabularies
(an id the training split never held goes to the out-of-vocabulary bucket 0), the training
split's dense mean and std, and the sequences' truncation and left padding, exactly as the data
module did (`recolab.data.datamodule.RankDataModule._encode`). It returns one column per task:
the served prediction (a probability, or the label's scale; a head's serving rule), calibrated
where the run calibrated (`RankModule`'s test predictions, row for row). A recaller takes
`user_id`, the run's user feature columns, `hist_items` (the user's items, most recent last) and
optionally `exclude_items` (items not to return; without it, the history's); it returns
`user_embedding` (the vector searched with: L2-normalized for cosine similarity; one per interest
for MIND and ComiRec), `item_ids` (the top `max(module.ks)` item ids, best first, as in the log)
and `scores`, found as the run's own evaluation found them (`RecallModule.retrieve`: exact
search, or the faiss index the run searched).

**A logged model is data** (DESIGN.md section 7). Its folder (`data/recolab_model/` in the MLflow
Model) holds `config.yaml` (the run's resolved config), `weights.pt` (the tested checkpoint's
`state_dict` and the data's model inputs: tensors and plain values, read with
`torch.load(weights_only=True)`), `features.json` (vocabularies, dense statistics, the columns a
caller sends) and, for a recaller, `item_embeddings.npy` (read with `allow_pickle=False`) and
`items.faiss` (faiss's own format; a flat index of the same vectors where the run searched
exactly). MLflow finds the code by name: the MLmodel file's `loader_module: recolab.serving`
calls `_load_pyfunc` of the installed recolab, which checks `config.yaml` with the checkpoint
allow-list (`recolab.checkpoint_config`: only recolab's classes are built) before building
anything. No `python_model` object is cloudpickled into the model, so loading one runs no code
that came with it. The price: the loading machine needs recolab installed (`pip install` of this
repository); `requirements.txt` lists it with the versions the run used.

`log_model` is called by `recolab.lifecycle.finish_run` once the report is written (`log_model:
true` in `configs/train.yaml`, the default); `register_as=<name>` also registers the model in
MLflow's Model Registry as a new version of `<name>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from recolab.checkpoint_config import check_stored_config
from recolab.data.columnar import Vocabulary, pad_left
from recolab.data.schema import DenseFeature, Schema, SequenceFeature, SparseFeature, Task
from recolab.resume import load_weights_only

log = logging.getLogger(__name__)

#: The model's name in its run (`runs:/<run id>/model`).
ARTIFACT = "model"
#: The folder MLflow copies into the model (`data/recolab_model/`).
FOLDER = "recolab_model"
FORMAT = 1
#: Rows scored per forward pass.
CHUNK = 16384
#: Rows of the run's test split kept as the model's input example.
EXAMPLE_ROWS = 5
#: The recaller's optional input column.
EXCLUDE = "exclude_items"
HISTORY = "hist_items"
#: Distributions recolab's serving path imports (their versions go to `requirements.txt`).
REQUIREMENTS = (
    "recolab",
    "torch",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "numpy",
    "pandas",
    "pyarrow",
    "faiss-cpu",
    "faiss-gpu",
    "mlflow",
)
_SCHEMA = "__recolab_schema__"


class ServingError(ValueError):
    """Rows a logged model cannot score: a missing column, a null, an id of the wrong kind."""


# ---------------------------------------------------------------------------------------------
# Data in, data out: the model inputs as plain values (no dataclass, no pickled object)


def _plain(value: Any, key: str) -> Any:
    """`value` as tensors and plain containers, loadable with `torch.load(weights_only=True)`."""
    if isinstance(value, Schema):
        return {_SCHEMA: dataclasses.asdict(value)}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{key}[{i}]") for i, v in enumerate(value))
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"{key}: a {type(value).__name__} cannot be stored in a logged model (only tensors, "
        "arrays, a Schema and plain values)"
    )


def _schema(d: Mapping[str, Any]) -> Schema:
    return Schema(
        sparse=tuple(SparseFeature(**f) for f in d["sparse"]),
        dense=tuple(DenseFeature(**f) for f in d["dense"]),
        sequences=tuple(SequenceFeature(**f) for f in d["sequences"]),
        tasks=tuple(Task(**t) for t in d["tasks"]),
        meta=tuple(d["meta"]),
        oracle=dict(d["oracle"]),
        user=tuple(d.get("user", ())),
        item=tuple(d.get("item", ())),
    )


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_SCHEMA}:
            return _schema(value[_SCHEMA])
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_restore(v) for v in value)
    return value


class _Inputs:
    """What `recolab.compose.build` asks a data module for, from the stored values."""

    def __init__(self, model: dict[str, Any], module: dict[str, Any]) -> None:
        self._model, self._module = model, module

    def model_inputs(self) -> dict[str, Any]:
        return dict(self._model)

    def module_inputs(self) -> dict[str, Any]:
        return dict(self._module)


def _vocab_json(values: Any) -> list:
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return array.tolist()


def _vocabularies(state: Mapping[str, Any]) -> dict[str, Vocabulary]:
    return {k: Vocabulary(np.asarray(v)) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Raw values -> what the model reads (the data module's encoding, for a DataFrame)


def _column(df: pd.DataFrame, name: str, what: str) -> pd.Series:
    if name not in df.columns:
        raise ServingError(
            f"the rows have no column {name!r} ({what}); columns given: {list(df.columns)}"
        )
    return df[name]


def _null_rows(name: str, mask: np.ndarray, what: str) -> ServingError:
    rows = np.flatnonzero(mask)
    shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
    return ServingError(f"column {name!r}: {len(rows)} {what} (rows {shown}, counted from 0)")


def _ids(df: pd.DataFrame, name: str, vocab: Vocabulary) -> np.ndarray:
    """(B,) codes of a sparse column: 1 + the id's place in the vocabulary, 0 for an unseen id."""
    raw = _column(df, name, "a sparse feature: ids as the log holds them").to_numpy()
    if raw.dtype == object or raw.dtype.kind in "OSU":
        null = pd.isna(raw)
        if null.any():
            raise _null_rows(name, null, "null id(s)")
    elif raw.dtype.kind == "f":  # integer ids with a null among them read as floats
        null = ~np.isfinite(raw)
        if null.any():
            raise _null_rows(name, null, "null id(s)")
        fractional = raw != np.round(raw)
        if fractional.any():
            raise _null_rows(name, fractional, "fractional id(s) (ids are integers or strings)")
        raw = raw.astype(np.int64)
    _check_kind(name, raw, vocab)
    return vocab.encode(raw)


def _check_kind(name: str, raw: np.ndarray, vocab: Vocabulary) -> None:
    """Integer ids never match string ids (1 is not "1"): say so instead of scoring all as unseen."""
    if not len(vocab.values) or not len(raw):
        return
    want_int = vocab.values.dtype.kind in "iu"
    if raw.dtype.kind == "O":
        first = next(iter(raw))
        got_int = isinstance(first, (int, np.integer)) and not isinstance(first, bool)
    else:
        got_int = raw.dtype.kind in "iu"
    if want_int != got_int:
        raise ServingError(
            f"column {name!r} holds {'integers' if got_int else 'strings'} ({raw.dtype}), but "
            f"the run's vocabulary of {name!r} holds {'integers' if want_int else 'strings'}: "
            "send the ids as the training log held them"
        )


def _lists(df: pd.DataFrame, name: str, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> (offsets (B + 1,), codes of every element)."""
    cells = _column(df, name, "a list of ids per row, most recent last").to_list()
    lengths, parts = [], []
    for i, cell in enumerate(cells):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            cell = []
        values = np.asarray(cell)
        if values.ndim != 1:
            raise ServingError(
                f"column {name!r}, row {i}: expected a list of ids, got {type(cell).__name__} "
                f"{str(cell)[:80]}"
            )
        lengths.append(len(values))
        parts.append(values)
    flat = (
        np.concatenate([p for p in parts if len(p)])
        if any(len(p) for p in parts)
        else np.zeros(0, dtype=vocab.values.dtype if len(vocab.values) else np.int64)
    )
    if flat.dtype.kind == "f":
        flat = flat.astype(np.int64)
    if len(flat):
        _check_kind(name, flat, vocab)
    offsets = np.zeros(len(cells) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    return offsets, vocab.encode(flat)


def encode_rank_features(
    df: pd.DataFrame,
    schema: Schema,
    vocabs: Mapping[str, Vocabulary],
    dense_stats: Mapping[str, tuple[float, float]],
) -> dict[str, torch.Tensor]:
    """Raw rows -> the ranker's features, as `RankDataModule._encode` makes them.

    Sparse ids (B,) int64 (0: out of vocabulary), dense values (B,) float32 standardized with the
    training split's mean and std, sequences (B, L) int64 (the last L ids, left-padded with 0).
    """
    features: dict[str, torch.Tensor] = {}
    for f in schema.sparse:
        features[f.name] = torch.from_numpy(_ids(df, f.name, vocabs[f.name]))
    for f in schema.dense:
        values = _column(
            df, f.name, "a dense feature: values as the log holds them, unscaled"
        ).to_numpy()
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise ServingError(f"column {f.name!r}: expected numbers ({e})") from None
        if not np.isfinite(values).all():
            raise _null_rows(f.name, ~np.isfinite(values), "non-finite value(s) (NaN, inf or null)")
        mean, std = dense_stats[f.name]
        features[f.name] = torch.from_numpy(((values - mean) / std).astype(np.float32))
    for f in schema.sequences:
        offsets, codes = _lists(df, f.name, vocabs[f.vocab_of or f.name])
        features[f.name] = torch.from_numpy(pad_left(offsets, codes, f.max_len))
    return features


# ---------------------------------------------------------------------------------------------
# The served models


class _Served:
    """What MLflow's pyfunc wraps: `predict(DataFrame) -> DataFrame`."""

    def __init__(self, module: torch.nn.Module, features: dict[str, Any]) -> None:
        self.module = module.eval()
        self.features = features
        self.vocabs = _vocabularies(features["vocabularies"])

    def _frame(self, model_input: Any) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            return model_input.reset_index(drop=True)
        if isinstance(model_input, (dict, list)):
            return pd.DataFrame(model_input)
        raise ServingError(
            f"expected a pandas DataFrame of raw rows, got {type(model_input).__name__}"
        )


class ServedRanker(_Served):
    """A ranker scoring raw rows: one column per task (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, features: dict[str, Any]) -> None:
        super().__init__(module, features)
        self.schema: Schema = module.schema
        self.dense_stats = {k: tuple(v) for k, v in features["dense_stats"].items()}
        #: The meta columns the served prediction reads, with the dtype the module read them in.
        self.meta_columns: dict[str, str] = dict(features["meta_columns"])

    @property
    def input_columns(self) -> list[str]:
        return [*self.schema.feature_names, *self.meta_columns]

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        df = self._frame(model_input)
        features = encode_rank_features(df, self.schema, self.vocabs, self.dense_stats)
        meta = {}
        for c, dtype in self.meta_columns.items():
            values = _column(df, c, "a meta column the served prediction reads").to_numpy()
            try:
                meta[c] = torch.from_numpy(np.array(values, dtype=np.dtype(dtype)))
            except (TypeError, ValueError) as e:
                raise ServingError(
                    f"column {c!r}: expected {np.dtype(dtype)} values ({e})"
                ) from None
        return pd.DataFrame(self.scores(features, meta))

    @torch.no_grad()
    def scores(
        self, features: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]
    ) -> dict[str, np.ndarray]:
        """Each task's served score for encoded rows, as `RankModule._evaluate` computes it."""
        module, n = self.module, len(next(iter(features.values())))
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in self.schema.tasks}
        for start in range(0, n, CHUNK):
            chunk = {k: v[start : start + CHUNK] for k, v in features.items()}
            chunk_meta = {k: v[start : start + CHUNK] for k, v in meta.items()}
            with torch.autocast("cpu", enabled=False):
                outputs = module(chunk)
            for t in self.schema.tasks:
                pred = module._predict(t, outputs[t.name].float(), chunk_meta)
                parts[t.name].append(pred.cpu().numpy())
        raw = {
            t: np.concatenate(p) if p else np.zeros(0, dtype=np.float32) for t, p in parts.items()
        }
        stage = module.calibration
        for t in stage.tasks:
            if stage.applies_to(t):
                raw[t] = stage(t, raw[t])
        return {t: np.asarray(v, dtype=np.float64) for t, v in raw.items()}


class ServedRecaller(_Served):
    """A recaller: user vectors and top-K items for raw users (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, features: dict[str, Any]) -> None:
        super().__init__(module, features)
        self.user_features: list[str] = list(features["user_features"])
        self.history_len = int(features["history_len"])
        self.items = self.vocabs["item_id"]

    @property
    def input_columns(self) -> list[str]:
        return ["user_id", *self.user_features, HISTORY]

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        df = self._frame(model_input)
        features = {"user_id": torch.from_numpy(_ids(df, "user_id", self.vocabs["user_id"]))}
        for name in self.user_features:
            features[name] = torch.from_numpy(_ids(df, name, self.vocabs[name]))
        offsets, codes = _lists(df, HISTORY, self.items)
        features[HISTORY] = torch.from_numpy(pad_left(offsets, codes, self.history_len))
        if EXCLUDE in df.columns and not df[EXCLUDE].isna().all():
            offsets, codes = _lists(df, EXCLUDE, self.items)
        seen = _csr(offsets, codes)
        users, ids, scores = self.retrieve(features, seen)
        values = self.items.values
        top = [[values[i - 1].item() for i in row if i > 0] for row in ids.tolist()]
        top_scores = [
            [float(s) for s, i in zip(r, ids_r) if i > 0]
            for r, ids_r in zip(scores.tolist(), ids.tolist())
        ]
        return pd.DataFrame(
            {"user_embedding": users.tolist(), "item_ids": top, "scores": top_scores}
        )

    @torch.no_grad()
    def retrieve(
        self, features: dict[str, torch.Tensor], seen: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D) or (B, K, D) user vectors, (B, max(ks)) item codes and their scores."""
        module = self.module
        users = module.sampler.scored(module.model.user_embeddings(features).float())
        ids = module.retrieve(features, seen)  # (B, N), -1 padded
        items = module._corpus()  # (I, D)
        vectors = items[ids.clamp_min(0)]  # (B, N, D)
        if users.dim() == 3:  # the best of the interests, as merge_interest_topk ranks them
            scores = torch.einsum("bkd,bnd->bkn", users, vectors).amax(1)  # (B, N)
        else:
            scores = torch.einsum("bd,bnd->bn", users, vectors)  # (B, N)
        return users, ids, scores.masked_fill(ids < 0, float("-inf"))


def _csr(offsets: np.ndarray, codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, its known item codes (out-of-vocabulary ones dropped) as `(indptr, indices)`."""
    row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    kept = codes > 0
    indptr = np.zeros(len(offsets), dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(row[kept], minlength=len(offsets) - 1))
    return torch.from_numpy(indptr), torch.from_numpy(codes[kept].astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Saving and loading the model's folder


def _recall(module: Any) -> bool:
    return hasattr(module, "retrieve") and hasattr(module, "_corpus")


class _Reads(dict):
    """A dict that records which keys were read (the meta columns a served prediction reads)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def _unseen(values: np.ndarray) -> Any:
    """An id that is not in the vocabulary `values` (it encodes to the out-of-vocabulary bucket)."""
    if values.dtype.kind in "iu":
        return int(values.max()) + 1 if len(values) else 0
    unseen = "<unseen>"
    while len(values) and unseen in set(values.tolist()):
        unseen += "_"
    return unseen


def _decode(codes: np.ndarray, vocab: Vocabulary) -> list:
    """Codes -> the raw ids they were encoded from (an unseen id for the out-of-vocabulary bucket)."""
    values = vocab.values
    if not len(values):
        return [_unseen(values)] * len(codes)
    raw = values[np.clip(codes - 1, 0, None)].tolist()
    unseen = _unseen(values)
    return [r if c > 0 else unseen for r, c in zip(raw, codes.tolist())]


def _decode_lists(codes: np.ndarray, vocab: Vocabulary) -> list[list]:
    """(B, L) left-padded codes -> per row the raw ids of its known items, most recent last."""
    values = vocab.values
    return [[values[c - 1].item() for c in row if c > 0] for row in codes.tolist()]


def _as_served(values: np.ndarray) -> np.ndarray:
    """A meta column as a request sends it: 64-bit (JSON numbers are read as int64 or float64)."""
    if values.dtype.kind == "f":
        return values.astype(np.float64)
    if values.dtype.kind in "iub":
        return values.astype(np.int64)
    return values


def _rank_rows(module: Any, datamodule: Any, n: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """The first `n` test rows as the log held them (features decoded, every meta column), and
    the dtype of each meta column as the module reads it."""
    schema: Schema = module.schema
    vocabs = datamodule.vocabs
    test = (getattr(datamodule, "data", None) or {}).get("test")
    if test is None:  # a stream: its first test batch
        test = next(iter(datamodule.test_dataloader()))
    features = {k: v[:n].cpu().numpy() for k, v in test["features"].items()}
    meta = {k: v[:n].cpu().numpy() for k, v in test.get("meta", {}).items()}
    rows: dict[str, Any] = {}
    for f in schema.sparse:
        rows[f.name] = _decode(features[f.name], vocabs[f.name])
    for f in schema.dense:
        mean, std = datamodule.dense_stats[f.name]
        rows[f.name] = features[f.name].astype(np.float64) * std + mean
    for f in schema.sequences:
        rows[f.name] = _decode_lists(features[f.name], vocabs[f.vocab_of or f.name])
    for name, values in meta.items():
        if name not in rows:
            rows[name] = _as_served(values)
    return pd.DataFrame(rows), {k: v.dtype.str for k, v in meta.items()}


def _meta_read(module: Any, rows: pd.DataFrame, vocabs: dict, stats: dict) -> list[str]:
    """The meta columns the served prediction reads, found by serving `rows` through `_Reads`."""
    schema: Schema = module.schema
    features = encode_rank_features(rows, schema, vocabs, stats)
    features = {k: v.to(module.device) for k, v in features.items()}
    meta = _Reads(
        {
            c: torch.from_numpy(np.array(rows[c].to_numpy())).to(module.device)
            for c in schema.meta
            if c in rows
        }
    )
    training = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.autocast(module.device.type, enabled=False):
            outputs = module(features)
            for t in schema.tasks:
                module._predict(t, outputs[t.name].float(), meta)
    finally:
        module.train(training)
    return [c for c in schema.meta if c in meta.read]


def _recall_rows(module: Any, datamodule: Any, n: int) -> pd.DataFrame:
    """The first `n` test users as the log held them: ids, features, history and seen items."""
    batch = next(iter(datamodule.test_dataloader()))
    features = {k: v[:n].cpu().numpy() for k, v in batch["features"].items()}
    vocabs = datamodule.vocabs
    rows: dict[str, Any] = {"user_id": _decode(features["user_id"], vocabs["user_id"])}
    for name in datamodule.model_inputs().get("user_features") or {}:
        rows[name] = _decode(features[name], vocabs[name])
    rows[HISTORY] = _decode_lists(features[HISTORY], vocabs["item_id"])
    indptr = batch["seen"]["indptr"].cpu().numpy()
    indices = batch["seen"]["indices"].cpu().numpy()
    items = vocabs["item_id"].values
    rows[EXCLUDE] = [
        [items[c - 1].item() for c in indices[indptr[i] : indptr[i + 1]] if c > 0]
        for i in range(min(n, len(indptr) - 1))
    ]
    return pd.DataFrame(rows)


def save(folder: Path, *, config: str, module: Any, datamodule: Any) -> pd.DataFrame:
    """Write the model's folder (see the module docstring) for a tested module; return the input
    example: the first test rows, as the log held them."""
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.create(config)  # a config, or fail here rather than on the loading machine
    (folder / "config.yaml").write_text(config)
    state = datamodule.state_dict()
    recall = _recall(module)
    features: dict[str, Any] = {
        "format": FORMAT,
        "kind": "recall" if recall else "rank",
        "vocabularies": {k: _vocab_json(v) for k, v in state["vocabs"].items()},
    }
    if recall:
        inputs = datamodule.model_inputs()
        features["user_features"] = list(inputs.get("user_features") or {})
        features["history_len"] = int(inputs["history_len"])
        example = _recall_rows(module, datamodule, EXAMPLE_ROWS)
    else:
        stats = {k: (float(m), float(s)) for k, (m, s) in state["dense_stats"].items()}
        features["dense_stats"] = {k: list(v) for k, v in stats.items()}
        rows, dtypes = _rank_rows(module, datamodule, EXAMPLE_ROWS)
        meta = _meta_read(module, rows, _vocabularies(features["vocabularies"]), stats)
        features["meta_columns"] = {c: dtypes[c] for c in meta}
        example = rows[[*module.schema.feature_names, *meta]]
    (folder / "features.json").write_text(json.dumps(features))
    weights = {
        "state_dict": _plain(module.state_dict(), "state_dict"),
        "model_inputs": _plain(datamodule.model_inputs(), "model_inputs"),
        "module_inputs": _plain(datamodule.module_inputs(), "module_inputs"),
    }
    torch.save(weights, folder / "weights.pt")
    if recall:
        import faiss

        from recolab.index import FaissIndex

        items = _item_vectors(module)
        np.save(folder / "item_embeddings.npy", items, allow_pickle=False)
        if module.index_kind == "exact":  # searched exactly: a flat index of the same vectors
            index = FaissIndex(kind="flat").build(items)
        else:  # the run's own index, built on the CPU (a GPU index is not written)
            options = {**module.index_options, "use_gpu": False}
            index = FaissIndex(kind=module.index_kind, **options).build(items)
        faiss.write_index(index._index, str(folder / "items.faiss"))
    return example


def _item_vectors(module: Any) -> np.ndarray:
    """(I, D) float32 item vectors as the run's evaluation searched them (row 0: padding)."""
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module.sampler.scored(module.model.all_item_embeddings().float()).cpu().numpy()
    finally:
        module.train(training)


def load(folder: str | Path) -> ServedRanker | ServedRecaller:
    """The served model from its folder: the config checked against the allow-list before
    anything is built, the weights read with `weights_only=True`."""
    folder = Path(folder)
    features = json.loads((folder / "features.json").read_text())
    if features.get("format") != FORMAT:
        raise ValueError(
            f"{folder}/features.json: format {features.get('format')!r}, this recolab reads {FORMAT}"
        )
    cfg = check_stored_config(
        (folder / "config.yaml").read_text(),
        folder / "config.yaml",
        rebuilt=("model", "module"),
        what="logged model",
    )
    weights = load_weights_only(folder / "weights.pt")
    inputs = _Inputs(_restore(weights["model_inputs"]), _restore(weights["module_inputs"]))
    from recolab.compose import build  # the same construction as training and `evaluate`

    _, module = build(cfg, inputs)
    module.load_state_dict(weights["state_dict"])
    module.eval()
    if features["kind"] == "rank":
        return ServedRanker(module, features)
    import faiss

    from recolab.index import FaissIndex

    module._items = torch.from_numpy(np.load(folder / "item_embeddings.npy", allow_pickle=False))
    if module.index_kind != "exact":
        index = FaissIndex(kind=module.index_kind, **module.index_options)
        index._index = faiss.read_index(str(folder / "items.faiss"))
        index._ids = np.arange(index._index.ntotal, dtype=np.int64)
        module._index = index
    return ServedRecaller(module, features)


def _load_pyfunc(data_path: str, model_config: Any = None) -> ServedRanker | ServedRecaller:
    """MLflow's entry point (`loader_module: recolab.serving` in the MLmodel file)."""
    return load(data_path)


# ---------------------------------------------------------------------------------------------
# Logging it with the run


def requirements() -> list[str]:
    """`requirements.txt` of the model: recolab and what its serving path imports, as installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in REQUIREMENTS:
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name}=={version(name)}")
    return found


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Without MLflow's hint that integer columns cannot hold missing values (ids never miss:
    recolab refuses null ids) and its INFO lines while logging a model ("Validating input
    example against model signature")."""
    loggers = [logging.getLogger(name) for name in ("mlflow.pyfunc", "mlflow.models")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_settings(cfg: DictConfig) -> None:
    """`log_model`, `log_checkpoints` and `register_as`, checked before any data is read:
    `ConfigError` naming each key, its value and what was expected."""
    from recolab.config_validation import ConfigError

    problems = []
    for key in ("log_model", "log_checkpoints"):
        if key in cfg and not isinstance(cfg.get(key), bool):
            problems.append(f"{key}={cfg.get(key)!r}: expected true or false")
    name = cfg.get("register_as")
    if name is not None:
        tracked = bool(cfg.get("logger")) and "mlflow" in cfg.logger
        if not isinstance(name, str) or not name.strip():
            problems.append(f"register_as={name!r}: expected a model name (a non-empty string)")
        elif any(c in name for c in "/:") or name != name.strip():
            problems.append(
                f"register_as={name!r}: MLflow's registered model names cannot hold '/' or ':' "
                "or start or end with spaces"
            )
        elif cfg.get("log_model") is not True:
            problems.append(
                f"register_as={name!r} registers the run's logged model: it needs "
                f"log_model=true (got {str(cfg.get('log_model')).lower()})"
            )
        elif not tracked:
            problems.append(
                f"register_as={name!r} registers the run's model in MLflow: it needs the "
                "MLflow logger (logger=mlflow, the default)"
            )
    if problems:
        raise ConfigError("\n".join(problems))


def log_model(
    cfg: DictConfig, *, module: Any, datamodule: Any, run_id: str, tracking_uri: str
) -> str:
    """Log the tested module as the run's MLflow Model `model` (and register it as
    `cfg.register_as` if set); return its URI, `runs:/<run id>/model`.

    The folder is loaded back and scores its input example before it is logged, as the loading
    machine will load it: a model that would not load fails the run here, not later there.
    """
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model, infer_signature
    from mlflow.types.schema import ColSpec
    from mlflow.types.schema import Schema as ColumnSchema

    config = module.run_info.get("config")
    if not config:
        raise ValueError("the module has no run config (RankModule.run_info): set by recolab.train")
    with tempfile.TemporaryDirectory(prefix="recolab-model-") as tmp:
        folder = Path(tmp) / FOLDER
        example = save(folder, config=config, module=module, datamodule=datamodule)
        output = load(folder).predict(example)
        with _quiet_mlflow():
            signature = infer_signature(example, output)
        if EXCLUDE in example.columns:  # optional: without it, the history is excluded
            signature.inputs = ColumnSchema(
                [
                    ColSpec(c.type, c.name, required=c.name != EXCLUDE)
                    for c in signature.inputs.inputs
                ]
            )
        try:
            step = int(module.trainer.global_step)  # the test metrics' step: the model carries them
        except RuntimeError:
            step = 0
        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient(tracking_uri)
        run = client.get_run(run_id)
        # Created here, in the run's experiment: MLflow's own would go to the process's active
        # (or default) experiment, and its artifacts to ./mlruns.
        created = client.create_logged_model(
            experiment_id=run.info.experiment_id,
            name=ARTIFACT,
            source_run_id=run_id,
            params={k: str(v) for k, v in run.data.params.items()},
        )
        with _quiet_mlflow():
            Model.log(
                artifact_path=None,  # deprecated by MLflow 3 for `name`, still positional
                name=ARTIFACT,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                step=step,
                loader_module=__name__,
                data_path=str(folder),
                signature=signature,
                input_example=example,
                pip_requirements=requirements(),
                registered_model_name=cfg.get("register_as") or None,
                model_id=created.model_id,
            )
        if client.get_logged_model(created.model_id).status != LoggedModelStatus.READY:
            client.finalize_logged_model(created.model_id, LoggedModelStatus.READY)
    return f"runs:/{run_id}/{ARTIFACT}"
