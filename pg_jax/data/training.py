"""The trainer's data: ``config.input`` -> a source and a resumable iterator of numpy batches.

  source, make_iterator = training.from_config(config, vocab_size=...)
  it = make_iterator(batch_size=per_process_batch, seed=config.seed, state=saved_position)

``config.input.data`` names a data set (``pg_jax.data.core``); ``{"name": "random"}`` gives
random batches (benchmarking: no files, no TensorFlow), and ``{"name": "arrays", "path": F}``
the preprocessed examples of a file written by ``pg_jax.data.preprocessed_arrays.write`` (the
real pipeline's output, read back without TensorFlow). The synthetic placeholder
(``path="synthetic"``) is generated on first use, and with ``config.input.cache_dir`` a raw
DocVQA source is prepared once into that cache and read from there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax


def resolve_synthetic(spec: dict, config) -> dict:
    """A data spec with the synthetic placeholder replaced by the generated set's directory."""
    from pg_jax.data import synthetic  # generation needs PIL only

    return synthetic.resolve_placeholder(spec, config.synthetic)


def prepared(spec: dict, config) -> dict:
    """With ``config.input.cache_dir``, a raw DocVQA source is prepared once into that cache
    (decoded and resized to ``config.input.res``) and read from there; later runs with the
    same options reuse it, and different options are refused rather than mixed in."""
    from pg_jax.data import cache_writer, core

    spec = core.resolve(spec)
    raw = {reader: source for source, reader in cache_writer.SOURCES.items()}
    if not config.input.cache_dir or spec["name"] not in raw:
        return spec
    selection = {k: spec[k] for k in ("limit", "fraction", "sample_seed", "question_types")
                 if spec.get(k) is not None}
    cache_writer.prepare(raw[spec["name"]], spec["path"], spec.get("split", "train"),
                         config.input.cache_dir, res=config.input.res, **selection)
    return {"name": "docvqa_prepared", "path": config.input.cache_dir}


def from_config(config, *, vocab_size: int) -> tuple[object, Callable]:
    """(source, make_iterator(batch_size=, seed=, state=)) for ``config.input``.

    Args:
      config: the training config (input.data, input.pp, input.shuffle_buffer, ...).
      vocab_size: the model's, for random batches.
    """
    if config.input.data["name"] == "random":
        from pg_jax.data import random_batches

        source = random_batches.RandomSource(
            res=config.input.res,
            text_len=config.input.text_len,
            vocab_size=vocab_size,
            # As many answer tokens as the loss scores (at most half the text).
            answer_len=min(config.loss_len, config.input.text_len // 2),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        return source, source.make_iterator
    if config.input.data["name"] == "arrays":
        from pg_jax.data import preprocessed_arrays

        source = preprocessed_arrays.ArraySource(
            config.input.data["path"], res=config.input.res, text_len=config.input.text_len,
            pp=config.input.pp, process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        return source, source.make_iterator
    from pg_jax.data import core, input_pipeline  # TensorFlow enters here, and only here

    source = core.get(**prepared(resolve_synthetic(config.input.data, config), config))
    return source, functools.partial(
        input_pipeline.make_iterator, source, config.input.pp,
        shuffle_buffer=config.input.shuffle_buffer,
    )


def resolve_eval_data(config) -> dict:
    """config.evals with the synthetic placeholder of each data spec generated and named."""
    out = {}
    for prefix, entry in config.evals.items():
        entry = dict(entry)
        for key in ("data", "baseline_data"):
            if key in entry:
                entry[key] = resolve_synthetic(entry[key], config)
        out[prefix] = entry
    return out


def total_steps(config, num_examples: int) -> int:
    """The run's length: config.total_steps if set (it wins over total_epochs, so that
    ``--config.total_steps=N`` works on any config), else total_epochs converted to steps."""
    if config.total_steps is not None:
        if config.total_steps < 1:
            raise ValueError(f"config.total_steps={config.total_steps}: expected at least 1")
        return int(config.total_steps)
    if config.total_epochs is None or config.total_epochs <= 0:
        raise ValueError("set config.total_steps or config.total_epochs (a positive number)")
    return max(1, math.ceil(config.total_epochs * num_examples / config.input.batch_size))
