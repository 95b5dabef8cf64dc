"""Pallas kernels on a sharded batch: each device runs the kernel on its own rows.

XLA cannot split a Pallas call: given inputs sharded over the batch, it gathers every device's
rows to each and runs the whole kernel everywhere. The kernels here (the FP8 GeGLU's scaling,
the soft-cap attention's forward pass) treat each leading index (a token row, a batch element)
independently, so `over_leading_axis` tells XLA, through `jax.experimental.custom_partitioning`,
that the leading axis may stay split: each device calls the kernel on its local block and no
rows move. The other axes, and the arguments without that leading axis (per-channel scales),
are replicated for the call.
"""

from __future__ import annotations

import string
from typing import Callable, Sequence

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec


def _leading_spec(mesh, shapes, split: Sequence[bool]):
    """The mesh axes the first split argument's leading axis is sharded over, or None when
    they do not divide every split argument's leading size (the call then runs replicated)."""
    axes = None
    for shape, is_split in zip(shapes, split):
        if is_split:
            sharding = shape.sharding
            spec = getattr(sharding, "spec", None)
            axes = spec[0] if spec else None
            break
    if axes is None:
        return None
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    size = 1
    for name in names:
        size *= mesh.shape[name]
    if any(s and shape.shape[0] % size for shape, s in zip(shapes, split)):
        return None
    return axes


def _sharding(mesh, axes, ndim: int, is_split: bool) -> NamedSharding:
    leading = (axes,) if is_split else (None,)
    return NamedSharding(mesh, PartitionSpec(*(leading + (None,) * (ndim - 1))[:ndim]))


def _rule(ndims: Sequence[int], split: Sequence[bool],
          out_ndims: Sequence[int]) -> tuple[str, tuple[str, ...]]:
    """The Shardy rule: one factor ``r`` for the split leading axes, a distinct factor for
    every other axis (each then replicated by `need_replication_factors`)."""
    letters = iter(string.ascii_lowercase.replace("r", ""))
    others = []

    def operand(ndim, is_split):
        dims = []
        for i in range(ndim):
            if i == 0 and is_split:
                dims.append("r")
            else:
                name = next(letters)
                others.append(name)
                dims.append(name)
        return " ".join(dims)

    ins = ", ".join(operand(n, s) for n, s in zip(ndims, split))
    outs = ", ".join(operand(n, True) for n in out_ndims)
    return ins + " -> " + outs, tuple(others)


def over_leading_axis(fn: Callable, args: Sequence[jax.Array], split: Sequence[bool]):
    """``fn(*args)`` with the leading axis of every argument marked in ``split``, and of every
    output, left sharded as the first split argument's is: each device computes its rows.

    Args:
      fn: a function of the arrays ``args``, returning a tuple of arrays, every one of which
        has the split leading axis, whose rows depend only on the same rows of the split
        arguments (a per-row or per-batch-element kernel).
      args: the arrays.
      split: per argument, whether its leading axis is the rows; the others (e.g. [F]
        per-channel scales) are replicated.
    Returns:
      ``fn(*args)``'s tuple.
    """
    split = tuple(bool(s) for s in split)
    out_avals = jax.eval_shape(fn, *args)
    out_ndims = [o.ndim for o in out_avals]
    rule, others = _rule([a.ndim for a in args], split, out_ndims)

    def shardings(mesh, arg_shapes):
        axes = _leading_spec(mesh, arg_shapes, split)
        ins = [_sharding(mesh, axes, a.ndim, s) for a, s in zip(arg_shapes, split)]
        outs = tuple(_sharding(mesh, axes, n, True) for n in out_ndims)
        return ins, outs

    @custom_partitioning
    def call(*xs):
        return fn(*xs)

    def infer(mesh, arg_shapes, result_shape):
        del result_shape
        return shardings(mesh, arg_shapes)[1]

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        ins, outs = shardings(mesh, arg_shapes)
        return mesh, fn, outs, tuple(ins)

    call.def_partition(infer_sharding_from_operands=infer, partition=partition,
                       sharding_rule=rule, need_replication_factors=others)
    return call(*args)
