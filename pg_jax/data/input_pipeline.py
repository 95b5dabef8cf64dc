"""The tf.data input pipeline: shard per host, shuffle, repeat, preprocess, batch, prefetch.

  source = core.get("docvqa_prepared", path=cache_dir)
  it = make_iterator(source, config.input.pp, batch_size=8, seed=0)  # pp: an op string
  batch = next(it)            # dict of numpy arrays, leading axis = per-host batch
  state = it.state()          # small JSON-able dict, saved with the checkpoint
  it = make_iterator(..., state=state)   # the same next batch as the saved iterator

Determinism: epoch e of this host is the source's fixed order shuffled with seed (seed, e), and
example i of epoch e gets the stateless seed (seed, e * n + i) for random ops (answer choice). The
iterator state is just the number of examples consumed: restoring starts at epoch n // size and
skips n % size parsed records (cheap: images are decoded after the skip).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from pg_jax.data import core
from pg_jax.data.core import DataSource
from pg_jax.pp import builder


@dataclasses.dataclass
class DataIterator:
    """Iterator over numpy batches that knows its position (see `state`)."""

    _it: Iterator
    batch_size: int
    seed: int
    examples: int  # Examples consumed so far (this host).

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self.examples += self.batch_size
        return batch

    def state(self) -> dict:
        """The position to save with a checkpoint: {"examples", "seed", "batch_size"}."""
        return {"examples": self.examples, "seed": self.seed, "batch_size": self.batch_size}


def make_dataset(
    source: DataSource,
    pp_fn: Callable | str,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    start_example: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 2,
) -> tf.data.Dataset:
    """The infinite, shuffled, preprocessed, batched training dataset of this host.

    Args:
      source: a DataSource.
      pp_fn: preprocessing function or op string.
      batch_size: per-host batch size. Epochs are concatenated before batching (a batch may
        span two epochs), so the position is a plain example count.
      seed: shuffling and random-op seed.
      shuffle_buffer: examples in the shuffle buffer; 0 or 1 disables shuffling.
      start_example: examples of this host's stream to skip (restore).
      process_index, process_count: this host's shard (default: jax.process_index/count()).
      prefetch: batches to prefetch.

    Returns:
      A tf.data.Dataset of batched example dicts.
    """
    index, count = _process(process_index, process_count)
    pp = builder.get_preprocess_fn(pp_fn) if isinstance(pp_fn, str) else pp_fn
    base = _reporting_skips(source, source.get_tfdata(shard_index=index, shard_count=count))
    base = base.enumerate()
    n = source.num_examples_for(index, count)
    if n == 0:
        raise ValueError(
            f"Host {index}/{count} has no examples (the source holds {source.num_examples})."
        )
    seed64 = tf.constant(seed, tf.int64)
    # Distinct per-host random streams: hosts hold different examples under the same indices.
    host_seed = seed64 * 1_000_003 + index

    def epoch(e):
        d = base
        if shuffle_buffer > 1:
            d = d.shuffle(shuffle_buffer, seed=host_seed * 7919 + e, reshuffle_each_iteration=False)

        # A named function, not a lambda: autograph cannot parse lambdas nested in flat_map.
        @tf.autograph.experimental.do_not_convert
        def add_seed(i, ex):
            return {**ex, "_seed": tf.stack([host_seed, e * n + i])}

        return d.map(add_seed)

    ds = tf.data.Dataset.counter(start=start_example // n).flat_map(epoch)
    ds = ds.skip(start_example % n)
    ds = ds.map(pp, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(prefetch)


def _reporting_skips(source: DataSource, epoch: tf.data.Dataset) -> tf.data.Dataset:
    """For a raw source (one that skips bad records as it reads, e.g. `docvqa_hf`), prints its
    skips now and, if reading the pages found more, once after the first pass over them."""
    report = getattr(source, "skip_report", None)
    if report is None:  # A prepared cache reported its skips when it was written.
        return epoch
    print(report(), flush=True)
    reported = [source.skips.total]

    def after_pass():  # An empty generator: runs when iteration reaches the end of an epoch.
        if source.skips.total != reported[0]:  # Skips count each record once, so: once.
            reported[0] = source.skips.total
            print(report(after_first_pass=True), flush=True)
        yield from ()

    return epoch.concatenate(
        tf.data.Dataset.from_generator(after_pass, output_signature=epoch.element_spec)
    )


def make_iterator(
    source: DataSource,
    pp_fn: Callable | str,
    *,
    batch_size: int,
    seed: int = 0,
    state: dict | None = None,
    **kw,
) -> DataIterator:
    """A numpy iterator over `make_dataset(...)`, optionally resumed from `state`.

    Args:
      source, pp_fn, batch_size, seed, **kw: as in `make_dataset`.
      state: a previous `DataIterator.state()`; its seed and batch size must match.

    Returns:
      The iterator.
    """
    start = core.resume_position(state, seed=seed, batch_size=batch_size)
    ds = make_dataset(source, pp_fn, batch_size=batch_size, seed=seed, start_example=start, **kw)
    return DataIterator(ds.as_numpy_iterator(), batch_size, seed, start)


def eval_batches(
    source: DataSource,
    pp_fn: Callable | str,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this host's examples in order; the last batch is padded to `batch_size`.

    Every batch has `_mask` (bool[B]): False marks padding rows, which evaluators must ignore.
    Every process yields the same number of batches (a host with fewer examples ends with fully
    masked ones), because a model call on params that span processes is a collective that all
    of them must join.
    """
    index, count = _process(process_index, process_count)
    pp = builder.get_preprocess_fn(pp_fn) if isinstance(pp_fn, str) else pp_fn
    ds = source.get_tfdata(shard_index=index, shard_count=count)
    ds = ds.map(pp, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).prefetch(2)
    most = max(source.num_examples_for(i, count) for i in range(count))
    produced, last = 0, None
    for batch in ds.as_numpy_iterator():
        b = len(next(iter(batch.values())))
        mask = np.arange(batch_size) < b
        if b < batch_size:  # Fixed shapes for jit: pad by repeating row 0, masked out.
            batch = {
                k: np.concatenate([v, np.repeat(v[:1], batch_size - b, 0)])
                for k, v in batch.items()
            }
        produced, last = produced + 1, batch
        yield {**batch, "_mask": mask}
    for _ in range(math.ceil(most / batch_size) - produced):
        if last is None:
            raise ValueError(f"process {index} of {count} has no evaluation examples")
        yield {**last, "_mask": np.zeros(batch_size, bool)}


def _process(index: int | None, count: int | None) -> tuple[int, int]:
    if index is None or count is None:
        import jax  # Only for the default; tests and tools pass explicit values.

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    return index, count
