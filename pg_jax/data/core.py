"""The `DataSource` protocol and `get(name, **kw)`.

A data source is one split of one data set, already selected (limit, fraction, sampling,
question-type filter). It knows its size and yields one epoch as a `tf.data.Dataset` of example
dicts for one host's shard; shuffling, repeating, preprocessing and batching are the input
pipeline's job (`pg_jax.data.input_pipeline`).

Registered sources (module `pg_jax.data.docvqa` unless noted):
  docvqa_hf        HF `HuggingFaceM4/DocumentVQA` parquet shards.
  docvqa_json      The original release: `{split}/{split}_v1.0[_withQT].json` + `documents/`.
  docvqa_prepared  A cache written by `python -m pg_jax.prepare_data` (`pg_jax.data.prepared`).

Example dict keys: question_id int64, question string, answers string[None],
question_types string[None], doc_id int64, image (encoded bytes, or uint8[res, res, 3]).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pg_jax.pp.registry import Registry

if TYPE_CHECKING:  # TensorFlow is only needed by get_tfdata's callers.
    import tensorflow as tf

_MODULES = ("pg_jax.data.docvqa", "pg_jax.data.prepared")


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


def get(name: str, **kw) -> DataSource:
    """Builds a registered data source by name.

    Args:
      name: "docvqa_hf", "docvqa_json" or "docvqa_prepared" (or another registered name).
      **kw: the source's constructor arguments (path, split, limit, ...).

    Returns:
      The data source.
    """
    for m in _MODULES:
        importlib.import_module(m)
    return Registry.lookup(f"datasets.{name}")(**kw)
