"""big_vision ``.npz`` checkpoints, read and written one array at a time.

Released PaliGemma checkpoints are flat, uncompressed ``np.savez`` files whose
keys are ``/``-joined parameter paths with a leading ``params/``. bfloat16
arrays are stored as numpy void ``|V2`` (numpy has no bfloat16) and are viewed
back as ``ml_dtypes.bfloat16``. Pickled arrays are never loaded.
"""

import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator

import ml_dtypes
import numpy as np

PREFIX = "params/"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and key."""


# What zipfile and numpy raise for a damaged member: bad CRC or local header (BadZipFile),
# corrupt deflate data (zlib.error), data cut short (EOFError), an unparsable header (ValueError).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError)


def _normalize_key(member: str) -> str:
    key = member[: -len(".npy")] if member.endswith(".npy") else member
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def _restore_dtype(dtype: np.dtype) -> np.dtype:
    # big_vision writes bfloat16 as raw 2-byte voids.
    return np.dtype(ml_dtypes.bfloat16) if dtype == np.dtype("V2") else dtype


def read_index(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of every array, from the .npy headers only.

    Returns:
      {key without "params/": (shape, dtype)}.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable .npz file ({e})") from e
    index = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            except _DAMAGED as e:
                raise CheckpointError(
                    f"{path}: bad array header in {info.filename}: {e}"
                ) from None
            if dtype.hasobject:
                raise CheckpointError(
                    f"{path}: {info.filename} holds Python objects (pickle); refusing to load it"
                )
            index[_normalize_key(info.filename)] = (tuple(shape), _restore_dtype(dtype))
    if not index:
        raise CheckpointError(f"{path}: no arrays in this .npz file")
    return index


def iter_arrays(path: str, keys: Iterable[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (key, array) one at a time, so only one array is in memory.

    Args:
      path: the .npz file.
      keys: keys (without "params/") to read, in this order; default all.
    """
    try:
        npz = np.load(path, allow_pickle=False)
    except _DAMAGED as e:
        raise CheckpointError(f"{path}: not a readable .npz file ({e})") from None
    with npz:
        members = {_normalize_key(m): m for m in npz.files}
        for key in members if keys is None else keys:
            if key not in members:
                raise CheckpointError(f"{path}: missing key {key!r}")
            try:
                arr = npz[members[key]]
            except _DAMAGED as e:
                raise CheckpointError(
                    f"{path}: cannot read {key!r} (member {members[key]}): {e}; the file is "
                    "damaged, copy or download it again"
                ) from None
            yield key, arr.view(_restore_dtype(arr.dtype))


def save(path: str, arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    """Writes a big_vision-style .npz atomically, streaming one array at a time.

    Keys get the ``params/`` prefix; bfloat16 arrays are stored as ``|V2`` like
    the released files. The file appears under ``path`` only once complete.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        # ZIP_STORED (no compression) as np.savez writes; allowZip64 for >4 GB.
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, arr in arrays:
                arr = np.asarray(arr)
                if arr.dtype == ml_dtypes.bfloat16:
                    arr = arr.view("V2")
                name = PREFIX + key.removeprefix(PREFIX) + ".npy"
                with zf.open(name, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
