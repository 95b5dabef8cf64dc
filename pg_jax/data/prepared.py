"""Reads a cache written by `python -m pg_jax.prepare_data` (TFRecord shards + manifest.json).

  source = pg_jax.data.core.get("docvqa_prepared", path="/tmp/docvqa_train_448")
  ds = source.get_tfdata(shard_index=jax.process_index(), shard_count=jax.process_count())

Images come out as PNG bytes (decode them with the `decode` op) or, for `image_format=raw`
caches, already as uint8[res, res, 3] (the `decode` op passes those through).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from pg_jax.pp.registry import Registry


@Registry.register("datasets.docvqa_prepared")
class PreparedDocVQA:
    """A prepared DocVQA cache (one split, one resolution)."""

    def __init__(self, path: str, **unused):
        """Opens the cache.

        Args:
          path: the cache directory (holding manifest.json).
          **unused: selection arguments are fixed at preparation time; passing any is an error.
        """
        if unused:
            raise TypeError(
                f"docvqa_prepared takes only `path`; selection was fixed by "
                f"prepare_data (got {sorted(unused)})."
            )
        manifest = os.path.join(path, "manifest.json")
        if not os.path.exists(manifest):
            raise FileNotFoundError(
                f"{manifest} not found: run `python -m pg_jax.prepare_data` "
                "first (an interrupted run leaves no manifest)."
            )
        with open(manifest) as f:
            self.manifest = json.load(f)
        self.path = path
        self.res = self.manifest["options"]["res"]
        self.image_format = self.manifest["options"]["image_format"]
        self.shards = self.manifest["shards"]

    @property
    def num_examples(self) -> int:
        return sum(s["examples"] for s in self.shards)

    def _split_files(self, shard_index: int, shard_count: int) -> tuple[list[dict], bool]:
        # Whole files per host when there are enough of them (no host reads others' data);
        # otherwise every host reads all files and keeps every shard_count-th record.
        if len(self.shards) >= shard_count and len(self.shards) % shard_count == 0:
            return self.shards[shard_index::shard_count], False
        return self.shards, True

    def num_examples_for(self, shard_index: int, shard_count: int) -> int:
        shards, by_record = self._split_files(shard_index, shard_count)
        n = sum(s["examples"] for s in shards)
        return len(range(shard_index, n, shard_count)) if by_record else n

    def get_tfdata(self, *, shard_index: int = 0, shard_count: int = 1) -> tf.data.Dataset:
        """One epoch of this host's examples, in file order, parsed into example dicts."""
        shards, by_record = self._split_files(shard_index, shard_count)
        files = [os.path.join(self.path, s["file"]) for s in shards]
        ds = tf.data.TFRecordDataset(files, num_parallel_reads=None, buffer_size=8 << 20)
        if by_record:
            ds = ds.shard(shard_count, shard_index)
        return ds.map(self.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def parse(self, record: tf.Tensor) -> dict[str, tf.Tensor]:
        """Parses one serialized record into an example dict."""
        feats = {
            "question_id": tf.io.FixedLenFeature([], tf.int64),
            "question": tf.io.FixedLenFeature([], tf.string),
            "answers": tf.io.VarLenFeature(tf.string),
            "question_types": tf.io.VarLenFeature(tf.string),
            "doc_id": tf.io.FixedLenFeature([], tf.int64),
            "image": tf.io.FixedLenFeature([], tf.string),
        }
        ex = tf.io.parse_single_example(record, feats)
        ex["answers"] = tf.sparse.to_dense(ex["answers"])
        ex["question_types"] = tf.sparse.to_dense(ex["question_types"])
        if self.image_format == "raw":
            img = tf.io.decode_raw(ex["image"], tf.uint8)
            ex["image"] = tf.reshape(img, [self.res, self.res, 3])
        return ex
