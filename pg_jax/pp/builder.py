"""Builds a preprocessing function from an op string such as

  "decode|resize(448)|value_range(-1, 1)|tok(key='prefix', bos='yes')|masked_concat(...)"

Each `|`-separated part names a registered `get_<op>` factory (see `registry.py`) called with the
given literal arguments; the resulting `fn(dict) -> dict` are applied left to right. Op modules
register on import, so callers import them first (`import_modules(config.pp_modules)`).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence

import tensorflow as tf

from pg_jax.pp.registry import Registry

DEFAULT_MODULES = ("ops_general", "ops_image", "ops_text")

Example = dict[str, tf.Tensor]
Op = Callable[[Example], Example]


def import_modules(modules: Sequence[str] = DEFAULT_MODULES) -> None:
    """Imports op modules by short name ("ops_text") or full dotted path, registering their ops."""
    for m in modules:
        importlib.import_module(m if "." in m else f"pg_jax.pp.{m}")


def get_preprocess_fn(pp: str | None, modules: Sequence[str] | None = DEFAULT_MODULES) -> Op:
    """Transforms an op string into a preprocessing function.

    Args:
      pp: ops separated by "|"; empty parts are ignored; None or "" gives the identity.
      modules: op modules to import first (None: import nothing).

    Returns:
      fn(dict of tensors) -> dict of tensors.

    Raises:
      ValueError / KeyError: on a malformed or unknown op, naming it.
    """
    if modules:
        import_modules(modules)
    ops = []
    for spec in (pp or "").split("|"):
        if not spec.strip():
            continue
        try:
            ops.append((spec.strip(), Registry.lookup(f"preprocess_ops.{spec.strip()}")()))
        except (ValueError, TypeError) as e:
            raise ValueError(f"Bad preprocessing op {spec.strip()!r}: {e}") from e

    def _preprocess(data: Example) -> Example:
        if not isinstance(data, dict):
            raise ValueError(f"Preprocessing expects a dict, got {type(data)}.")
        for spec, op in ops:
            with tf.name_scope(spec.split("(")[0]):
                data = op(data)
        return data

    return _preprocess


def InKeyOutKey(indefault: str | None = "image", outdefault: str | None = "image"):  # noqa: N802
    """Decorator for ops that transform one key: adds `key`, `inkey` and `outkey` arguments.

    The decorated factory returns `fn(tensor) -> tensor`; the wrapper reads `inkey` (or `key`)
    from the example and writes `outkey` (or `key`), leaving other keys untouched.
    """

    def decorator(make_op):
        @functools.wraps(make_op)
        def factory(*args, key=None, inkey=indefault, outkey=outdefault, **kw) -> Op:
            op = make_op(*args, **kw)
            src, dst = key or inkey, key or outkey

            def _apply(data: Example) -> Example:
                return {**data, dst: op(data[src])}

            return _apply

        return factory

    return decorator
