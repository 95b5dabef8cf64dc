"""Device mesh, parameter/optimizer-state sharding by regex rules, and global batches.

Sharding is data in the config (big_vision ``sharding.py`` semantics)::

    config.mesh = [("data", -1)]                        # axis name -> size (-1: the rest)
    config.sharding_strategy = [(".*", 'fsdp(axis="data")')]   # regex -> rule, first match wins

Rules: ``fsdp(axis=..., min_size_mb=4)`` shards the largest dimension divisible by the axis size
(small arrays stay replicated: sharding them costs more communication than it saves memory);
``replicate()`` keeps a full copy on every device. Optimizer-state leaves are matched by the name
of the parameter they mirror (Adam's mu/nu of ``llm/...`` shard like ``llm/...``).

Multi-host: `initialize_distributed()` calls ``jax.distributed.initialize()`` when the environment
says there are several processes (TPU pods, SLURM, or explicit coordinator variables); each
process feeds its own rows and `global_batch` assembles them into one global array.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pg_jax.pp.registry import parse_name

def initialize_distributed() -> None:
    """Joins the other processes of a multi-host run; a no-op on one host.

    ``jax.distributed.initialize()`` auto-detects TPU pods and SLURM; elsewhere set
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (e.g. multi-node GPU).
    It must run before anything touches the devices.
    """
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    on_cluster = "SLURM_JOB_ID" in os.environ or "TPU_WORKER_HOSTNAMES" in os.environ
    if explicit:
        jax.distributed.initialize(
            coordinator_address=explicit,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif on_cluster:
        jax.distributed.initialize()

def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> Mesh:
    """A device mesh from ``[(name, size), ...]``; one size may be -1 (all remaining devices).

    Args:
      axes: mesh axes, e.g. ``[("data", -1)]``.
      devices: default ``jax.devices()`` (all processes' devices).

    Returns:
      The Mesh.
    """
    devices = np.asarray(devices if devices is not None else jax.devices())
    names, sizes = zip(*axes)
    sizes = list(sizes)
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {axes}")
    if -1 in sizes:
        rest = int(np.prod([s for s in sizes if s != -1]))
        sizes[sizes.index(-1)] = devices.size // rest
    if int(np.prod(sizes)) != devices.size:
        raise ValueError(f"config.mesh {axes} does not fit {devices.size} devices")
    return Mesh(devices.reshape(sizes), names)

def _parse_rule(text: str) -> tuple[str, dict]:
    try:  # the pp registry's parser: a name called with Python literals, nothing executed
        name, args, kwargs = parse_name(text)
    except ValueError as e:
        raise ValueError(f"config.sharding_strategy: {e}") from None
    if name not in ("fsdp", "replicate") or args:
        raise ValueError(
            f"config.sharding_strategy: unknown rule {text!r}; known: fsdp(axis=...), replicate()"
        )
    return name, kwargs

def _spec_for(rule: str, kw: dict, shape: tuple[int, ...], itemsize: int, mesh: Mesh):
    if rule == "replicate" or not shape:
        return PartitionSpec()
    axis = kw["axis"]
    axis_size = int(np.prod([mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis)]))
    if np.prod(shape) * itemsize <= kw.get("min_size_mb", 4) * 2**20 or axis_size == 1:
        return PartitionSpec()
    # Largest dimension first: the biggest saving and usually a clean divisor.
    for i in np.argsort(shape)[::-1]:
        if shape[i] % axis_size == 0:
            spec = [None] * len(shape)
            spec[i] = axis
            return PartitionSpec(*spec)
    logging.getLogger(__name__).info(
        "fsdp: no dimension of %s divisible by %d; replicated", shape, axis_size
    )
    return PartitionSpec()

def _name_of(path) -> str:
    """The parameter name a leaf belongs to: the flat key ("llm/...") or the joined path."""
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    flat = [k for k in keys if "/" in k]  # flat-dict keys of the trainable params
    return flat[-1] if flat else "/".join(keys)

def infer_sharding(tree, strategy: Sequence[tuple[str, str]], mesh: Mesh):
    """NamedShardings for every leaf of a tree of arrays or ShapeDtypeStructs.

    Args:
      tree: params, optimizer state or the whole train state.
      strategy: (regex, rule) pairs; the first regex that fully matches the leaf's parameter
        name wins; leaves matching none are replicated.
      mesh: the device mesh.

    Returns:
      A tree of NamedSharding with the structure of `tree`.
    """
    rules = [(re.compile(r), *_parse_rule(t)) for r, t in strategy]

    def one(path, leaf):
        name = _name_of(path)
        shape = tuple(getattr(leaf, "shape", ()))
        itemsize = np.dtype(getattr(leaf, "dtype", np.float32)).itemsize
        for regex, rule, kw in rules:
            if regex.fullmatch(name):
                return NamedSharding(mesh, _spec_for(rule, kw, shape, itemsize, mesh))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, tree)

def batch_sharding(mesh: Mesh, axis: str = "data") -> NamedSharding:
    """Leading (batch) dimension split over `axis`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(axis))

def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, axis: str = "data") -> dict:
    """This process's rows -> one global jax.Array per key, sharded over `axis`.

    Args:
      local: numpy arrays with this process's rows on axis 0 (string arrays are dropped: they
        are for evaluators, which read them on the host).
      mesh: the device mesh.
      axis: the data axis.

    Returns:
      {key: jax.Array} whose global batch is the concatenation over processes.
    """
    sharding = batch_sharding(mesh, axis)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local.items()
        if np.asarray(v).dtype.kind not in "OSU"
    }

def describe(shardings, params) -> str:
    """One line per sharded leaf ("name shape -> spec"), for the start-up log."""
    lines = []
    flat_s = jax.tree_util.tree_flatten_with_path(shardings)[0]
    flat_p = jax.tree_util.tree_leaves(params)
    for (path, s), p in zip(flat_s, flat_p):
        if any(a is not None for a in s.spec):
            lines.append(f"  {_name_of(path)} {tuple(p.shape)} -> {s.spec}")
    return "\n".join(lines) or "  (everything replicated)"
