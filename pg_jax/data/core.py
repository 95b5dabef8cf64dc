"""The `DataSource` protocol and `get(name, **kw)`.

A data source is one split of one data set, already selected (limit, fraction, sampling,
question-type filter). It knows its size and yields one epoch as a `tf.data.Dataset` of example
dicts for one host's shard; shuffling, repeating, preprocessing and batching are the input
pipeline's job (`pg_jax.data.input_pipeline`).

A config names its data set: ``config.input.data = {"name": ..., **constructor arguments}``.
Registered names (module `pg_jax.data.docvqa` unless noted):
  docvqa           Whichever DocVQA layout is at `path` (`resolve` picks one of the next three).
  docvqa_hf        HF `HuggingFaceM4/DocumentVQA` parquet shards.
  docvqa_json      The original release: `{split}/{split}_v1.0[_withQT].json` + `documents/`.
  docvqa_prepared  A cache written by `python -m pg_jax.prepare_data` (`pg_jax.data.prepared`).
A new data set registers its reader class under ``datasets.<name>`` in one of `READER_MODULES`
(another VQA set in the HF parquet layout: one `docvqa.register_parquet_vqa` line).

Example dict keys: question_id int64, question string, answers string[None],
question_types string[None], doc_id int64, image (encoded bytes, or uint8[res, res, 3]).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pg_jax.pp.registry import Registry

if TYPE_CHECKING:  # TensorFlow is only needed by get_tfdata's callers.
    import tensorflow as tf

# Modules whose import registers readers (under "datasets.<name>").
READER_MODULES = ("pg_jax.data.docvqa", "pg_jax.data.prepared")
# Constructor arguments that select records; a prepared cache fixed them when it was written.
_SELECTION = ("split", "limit", "fraction", "sample_seed", "question_types")


@runtime_checkable
class DataSource(Protocol):
    """One selected split of a data set."""

    @property
    def num_examples(self) -> int:
        """Number of examples in the whole selection (all hosts)."""

    def num_examples_for(self, shard_index: int, shard_count: int) -> int:
        """Number of examples that `get_tfdata(shard_index, shard_count)` yields."""

    def get_tfdata(self, *, shard_index: int = 0, shard_count: int = 1) -> tf.data.Dataset:
        """One epoch of this host's shard, in a fixed order, as a dataset of example dicts."""


def resume_position(state: dict | None, *, seed: int, batch_size: int) -> int:
    """The example an iterator resumes at: 0 without a saved ``state()``, else its position.

    Every training iterator (tf.data's, random batches, preprocessed arrays) saves
    ``{"seed", "batch_size", "examples"}``; a state saved with another seed or batch size would
    resume elsewhere in another order, so it is refused.
    """
    if state is None:
        return 0
    if (state["seed"], state["batch_size"]) != (seed, batch_size):
        raise ValueError(f"Iterator state {state} was saved with another seed or batch size "
                         f"(now seed={seed}, batch_size={batch_size}).")
    return state["examples"]


def resolve(spec: dict) -> dict:
    """The spec with ``name="docvqa"`` replaced by the reader for what is at ``spec["path"]``.

    This is the one place that chooses a reader from what is on disk: a prepare_data cache
    (manifest.json; its selection is fixed, so selection arguments are dropped), a synthetic
    set's root (its ``docvqa/`` JSON copy), a directory holding .parquet files (HF layout), or
    else the original JSON release. Other names are returned unchanged.
    """
    spec = dict(spec)
    if spec.get("name") != "docvqa":
        return spec
    path = spec["path"]
    if not os.path.exists(path):
        raise FileNotFoundError(f"data directory {path} does not exist")
    if os.path.exists(os.path.join(path, "manifest.json")):
        if spec.get("limit"):
            print(f"note: limit={spec['limit']} is ignored for the prepared cache {path} (its "
                  "selection was fixed when it was written)", flush=True)
        return {k: v for k, v in spec.items() if k not in _SELECTION} | {
            "name": "docvqa_prepared"}
    if os.path.isdir(os.path.join(path, "docvqa")):  # a synthetic set: read its JSON copy
        return {**spec, "name": "docvqa_json", "path": os.path.join(path, "docvqa")}
    if os.path.isdir(path) and any(f.endswith(".parquet") for _, _, fs in os.walk(path)
                                   for f in fs):
        return {**spec, "name": "docvqa_hf"}
    return {**spec, "name": "docvqa_json"}


def get(name: str, **kw) -> DataSource:
    """Builds a registered data source by name.

    Args:
      name: a registered name (see the module docstring).
      **kw: the source's constructor arguments (path, split, limit, ...).

    Returns:
      The data source.
    """
    for m in READER_MODULES:
        importlib.import_module(m)
    spec = resolve({"name": name, **kw})
    name = spec.pop("name")
    try:
        reader = Registry.lookup(f"datasets.{name}")
    except KeyError as e:  # a config error: one line naming the known data sets
        raise ValueError(f"config data name={name!r}: {e.args[0]}") from None
    return reader(**spec)
