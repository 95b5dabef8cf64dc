"""safetensors files through the ``safetensors`` package's numpy API, one file or shards.

bfloat16 tensors come out as ``ml_dtypes.bfloat16`` arrays and are written from them
(safetensors >= 0.4.1). Reading is lazy: ``SafetensorsFile(path).get(name)`` reads one tensor
(memory-mapped) at a time. Writing holds one shard's tensors at a time (at most
``shard_bytes``). A damaged file is refused with a ``CheckpointError`` naming it, and the tensor
whose offsets are wrong when that is the cause.
"""

import json
import os
import struct
from collections.abc import Callable, Sequence

import numpy as np
import safetensors
import safetensors.numpy

from pg_jax.models.npz_io import CheckpointError

SHARD_BYTES = 5 * 1000**3  # transformers' default max_shard_size="5GB"
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1}  # fmt: skip


class SafetensorsFile:
    """Lazy view of one .safetensors file: ``f.shapes``, ``f.get(name)``."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = safetensors.safe_open(path, framework="numpy")
        except safetensors.SafetensorError as e:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({e}){_diagnose(path)}"
            ) from None
        self.metadata = self._file.metadata() or {}
        self.shapes = {k: tuple(self._file.get_slice(k).get_shape()) for k in self._file.keys()}

    def get(self, name: str) -> np.ndarray:
        try:
            return self._file.get_tensor(name)
        # AttributeError: a dtype numpy lacks (e.g. F8_E4M3 asks for numpy.float8_e4m3fn).
        except (safetensors.SafetensorError, AttributeError) as e:
            dtype = self._file.get_slice(name).get_dtype()
            raise CheckpointError(
                f"{self.path}: cannot read tensor {name!r} of dtype {dtype} ({e})"
            ) from None


def _diagnose(path: str) -> str:
    """Says which tensor's data_offsets do not fit the file, if the header reads at all."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        data_bytes = os.path.getsize(path) - 8 - n
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            nbytes = int(np.prod(entry["shape"])) * _ITEMSIZE.get(entry["dtype"], 0)
            where = f"; tensor {name!r} has data_offsets [{begin}, {end}]"
            if end > data_bytes:
                return f"{where} but the file holds {data_bytes} data bytes: truncated?"
            if _ITEMSIZE.get(entry["dtype"]) and end - begin != nbytes:
                shape = f"{entry['shape']} {entry['dtype']}"
                return f"{where} ({end - begin} bytes) but shape {shape} needs {nbytes}"
    except (OSError, ValueError, KeyError, TypeError, struct.error, MemoryError):
        pass  # The library's message is all there is to say.
    return ""


def write_sharded(
    out_dir: str,
    tensors: Sequence[tuple[str, tuple[int, ...], np.dtype]],
    fetch: Callable[[str], np.ndarray],
    shard_bytes: int = SHARD_BYTES,
) -> list[str]:
    """Writes tensors as ``model.safetensors`` or ``model-0000i-of-0000n`` shards.

    Tensors are computed by ``fetch(name)`` shard by shard, so at most one shard's worth of
    converted arrays exists at a time. An index file ``model.safetensors.index.json`` is
    written when there is more than one shard. Each file appears only once complete.

    Args:
      out_dir: directory to write into.
      tensors: (name, shape, dtype) of every tensor, in file order.
      fetch: returns the array for a name (any array-like with that shape/dtype).
      shard_bytes: a shard is closed before it would exceed this size.

    Returns:
      The written file names.
    """
    shards, current, size = [], [], 0
    for name, shape, dtype in tensors:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, tuple(shape), np.dtype(dtype)))
        size += nbytes
    shards.append(current)

    files = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    weight_map = {}
    for fname, shard in zip(files, shards):
        arrays = {}
        for name, shape, dtype in shard:
            arr = np.ascontiguousarray(np.asarray(fetch(name)), dtype=dtype)
            if arr.shape != shape:
                raise ValueError(f"tensor {name}: shape {arr.shape}, planned {shape}")
            arrays[name] = arr
            weight_map[name] = fname
        path = os.path.join(out_dir, fname)
        # transformers refuses files whose metadata lacks a known "format".
        safetensors.numpy.save_file(arrays, path + ".tmp", metadata={"format": "pt"})
        os.replace(path + ".tmp", path)
        del arrays
    if len(files) > 1:
        total = sum(int(np.prod(s)) * np.dtype(d).itemsize for _, s, d in tensors)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    return files
