"""General preprocessing ops: copy, keep, drop, setdefault, tolen.

Every op here works on a single (unbatched) example dict, eagerly or inside tf.data.
"""

from __future__ import annotations

import tensorflow as tf

from pg_jax.pp.builder import Example, InKeyOutKey, Op
from pg_jax.pp.registry import Registry


@Registry.register("preprocess_ops.copy")
def get_copy(inkey: str, outkey: str) -> Op:
    """Copies `inkey` to `outkey` (e.g. the raw question becomes the prefix)."""

    def _copy(data: Example) -> Example:
        return {**data, outkey: data[inkey]}

    return _copy


@Registry.register("preprocess_ops.keep")
def get_keep(*keys: str) -> Op:
    """Keeps only `keys`; a missing key raises, as it is always a config mistake."""

    def _keep(data: Example) -> Example:
        missing = [k for k in keys if k not in data]
        if missing:
            raise KeyError(f"keep: missing {missing}; have {sorted(data)}")
        return {k: data[k] for k in keys}

    return _keep


@Registry.register("preprocess_ops.drop")
def get_drop(*keys: str) -> Op:
    """Drops `keys` (absent ones are ignored)."""

    def _drop(data: Example) -> Example:
        return {k: v for k, v in data.items() if k not in keys}

    return _drop


@Registry.register("preprocess_ops.setdefault")
def get_setdefault(key: str, value) -> Op:
    """Sets `key` to the constant `value` if the example has no `key`."""

    def _setdefault(data: Example) -> Example:
        if key in data:
            return data
        return {**data, key: tf.constant(value)}

    return _setdefault


@Registry.register("preprocess_ops.tolen")
@InKeyOutKey(indefault=None, outdefault=None)
def get_tolen(length: int, *, pad_value=0):
    """Pads (with `pad_value`) or cuts the first axis of a 1-D tensor to exactly `length`.

    Works for token ids, masks and string lists (e.g. answers padded with "" for batching).
    Truncating text is `fit`'s job (it keeps the eos); here cutting is a last resort.
    """

    def _tolen(x: tf.Tensor) -> tf.Tensor:
        x = x[:length]
        pad = tf.fill([length - tf.shape(x)[0]], tf.constant(pad_value, dtype=x.dtype))
        out = tf.concat([x, pad], axis=0)
        return tf.ensure_shape(out, [length])

    return _tolen
