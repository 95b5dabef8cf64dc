"""Minimal safetensors reader and sharded writer with bfloat16 support.

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
and the raw little-endian tensor bytes. numpy has no bfloat16, so the
``safetensors`` package's numpy API cannot read or write it; ml_dtypes can.
Tensors are read lazily (memory-mapped), one at a time.
"""

import json
import os
import struct
from collections.abc import Callable, Sequence

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(bool),
}
NAMES = {v: k for k, v in DTYPES.items()}
SHARD_BYTES = 5 * 1000**3  # transformers' default max_shard_size="5GB"


class SafetensorsFile:
    """Lazy view of one .safetensors file: ``f.shapes``, ``f.get(name)``."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 1000**2:
                raise ValueError(f"{path}: implausible safetensors header length {n}")
            try:
                header = json.loads(f.read(n))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: safetensors header is not JSON ({e})") from e
        self.metadata = header.pop("__metadata__", {}) or {}
        self._entries = header
        self._data_start = 8 + n
        self.shapes = {k: tuple(v["shape"]) for k, v in header.items()}

    def dtype(self, name: str) -> np.dtype:
        code = self._entries[name]["dtype"]
        if code not in DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
        return DTYPES[code]

    def get(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        dtype = self.dtype(name)
        count = (end - begin) // dtype.itemsize
        arr = np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + begin,
                        shape=(count,))
        return np.array(arr).reshape(entry["shape"])


def write_sharded(
    out_dir: str,
    tensors: Sequence[tuple[str, tuple[int, ...], np.dtype]],
    fetch: Callable[[str], np.ndarray],
    shard_bytes: int = SHARD_BYTES,
) -> list[str]:
    """Writes tensors as ``model.safetensors`` or ``model-0000i-of-0000n`` shards.

    Tensors are computed by ``fetch(name)`` one at a time while writing, so the
    whole model never exists twice in memory. An index file
    ``model.safetensors.index.json`` is written when there is more than one shard.

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
        header, offset = {}, 0
        for name, shape, dtype in shard:
            nbytes = int(np.prod(shape)) * dtype.itemsize
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        # transformers refuses files whose metadata lacks a known "format".
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
        path = os.path.join(out_dir, fname)
        with open(path + ".tmp", "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype in shard:
                arr = np.ascontiguousarray(np.asarray(fetch(name)), dtype=dtype)
                if arr.shape != shape:
                    raise ValueError(f"tensor {name}: shape {arr.shape}, planned {shape}")
                f.write(arr.tobytes())
        os.replace(path + ".tmp", path)
    if len(files) > 1:
        total = sum(int(np.prod(s)) * np.dtype(d).itemsize for _, s, d in tensors)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    return files
