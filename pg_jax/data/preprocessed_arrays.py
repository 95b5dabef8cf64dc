"""Preprocessed training examples stored as arrays: the trainer's data without TensorFlow.

  write(path, source, pp)                                 # runs the real tf.data pipeline, once
  config.input.data = {"name": "arrays", "path": path}    # read back with numpy only

`write` runs the training pipeline (``config.input.pp`` on a data source, `input_pipeline`) over
one pass of the source and stores what it yields per example, so a machine without TensorFlow
(the GPU machine) trains on exactly those examples. One pass means one draw of each random op
(the answer ``choice``): fine for sets with one accepted answer per question.

The file (``np.savez_compressed``; mostly-white pages compress well):
  image        uint8[P, res, res, C]   the distinct images (a page asked two questions is
                                       stored once); ``(x + 1) * 127.5`` rounded, so reading it
                                       back undoes ``value_range(-1, 1)`` to within 1/255. C is
                                       1 when every image is gray (R = G = B: black print on
                                       white pages), a third of the bytes; read back as RGB
  image_index  int32[N]                each example's row of ``image``
  text, mask_ar, mask_loss, mask_input int32[N, text_len + 1]; truncated int32[N]
  pp           the op string that made them (a run with another ``config.input.pp`` is refused)

The iterator shuffles each epoch with (seed, process, epoch), concatenates epochs (a batch may
span two, as in the tf.data pipeline), and its ``state()`` is the example count, so a resumed
run continues the same stream.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

from pg_jax.data import core

# What the training pp keeps besides the image (configs/common.py's combine_and_keep_train).
TEXT_KEYS = ("text", "mask_ar", "mask_loss", "mask_input", "truncated")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] floats (after value_range(-1, 1)) -> uint8, rounded to the nearest 1/255 step."""
    return np.clip(np.rint((image + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _from_uint8(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def write(path: str, source, pp: str, *, seed: int = 0, batch_size: int = 64,
          progress: bool = True) -> dict:
    """Runs the training pipeline over one pass of `source` and writes its examples to `path`.

    Args:
      path: the .npz file to write (replaced whole: written next to it, then renamed).
      source: a DataSource (`pg_jax.data.core.get(...)`).
      pp: the training op string (``config.input.pp``).
      seed: the pipeline's seed (the random ops' draws).
      batch_size: examples per pipeline batch while writing (memory only).
      progress: a progress bar over the examples.

    Returns:
      {"examples", "images", "bytes"}.
    """
    import tqdm

    from pg_jax.data import input_pipeline  # TensorFlow: the writer runs the real pipeline

    n = source.num_examples
    # No shuffling: epoch 0 in the source's order, with the per-example seeds of training.
    ds = input_pipeline.make_dataset(source, pp, batch_size=batch_size, seed=seed,
                                     shuffle_buffer=0, process_index=0, process_count=1)
    columns = {k: [] for k in TEXT_KEYS}
    # Kept one channel while every image so far is gray (a third of the memory as well).
    images, image_index, seen, gray = [], [], {}, True
    bar = tqdm.tqdm(total=n, desc="  preprocessing", unit="ex", disable=not progress)
    for batch in ds.take(math.ceil(n / batch_size)).as_numpy_iterator():
        # The last batch runs into epoch 1 (drop_remainder): only the first n examples count.
        rows = min(batch_size, n - len(image_index))
        for k in TEXT_KEYS:
            columns[k].append(batch[k][:rows].astype(np.int32))
        for img in _to_uint8(batch["image"][:rows]):
            key = hashlib.blake2b(img.tobytes(), digest_size=16).digest()
            if key not in seen:
                seen[key] = len(images)
                if gray and not (img == img[..., :1]).all():
                    gray, images = False, [np.repeat(x, 3, axis=-1) for x in images]
                images.append(img[..., :1].copy() if gray else img)
            image_index.append(seen[key])
        bar.update(rows)
    bar.close()
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a name
        np.savez_compressed(f, image=np.stack(images),
                            image_index=np.asarray(image_index, np.int32), pp=np.asarray(pp),
                            **arrays)
    os.replace(tmp, path)
    return {"examples": n, "images": len(images), "bytes": os.path.getsize(path)}


class ArraySource:
    """The examples of a `write` file, this process's share of them, held in memory."""

    def __init__(self, path: str, *, res: int | None = None, text_len: int | None = None,
                 pp: str | None = None, process_index: int = 0, process_count: int = 1):
        """Loads `path`; `res`, `text_len` and `pp`, when given, must be what it was made with.

        Raises:
          FileNotFoundError / ValueError: a missing file, or one made for another config.
        """
        if not os.path.exists(path):
            raise FileNotFoundError(f"data arrays file {path} does not exist (write it with "
                                    "scripts/make_demo_checkpoint.py --write_arrays)")
        with np.load(path) as f:
            missing = {"image", "image_index", "pp", *TEXT_KEYS} - set(f.files)
            if missing:
                raise ValueError(f"{path} is not a preprocessed arrays file (no "
                                 f"{', '.join(sorted(missing))})")
            data = {k: f[k] for k in f.files}
        self.pp = str(data.pop("pp"))
        file_res, file_len = data["image"].shape[1], data["text"].shape[1] - 1
        if res is not None and res != file_res:
            raise ValueError(f"{path} holds {file_res} px images; the config's input.res is {res}")
        if text_len is not None and text_len != file_len:
            raise ValueError(f"{path} holds text_len {file_len}; the config's input.text_len is "
                             f"{text_len}")
        if pp is not None and pp != self.pp:
            raise ValueError(f"{path} was made with another input.pp than the config's:\n  file:"
                             f"   {self.pp}\n  config: {pp}")
        self.num_examples = len(data["text"])
        # Each process trains on its own contiguous share (as the tf.data pipeline's shards).
        rows = np.array_split(np.arange(self.num_examples), process_count)[process_index]
        if len(rows) == 0:
            raise ValueError(f"process {process_index} of {process_count} has no examples in "
                             f"{path} ({self.num_examples} in all)")
        self.images = data["image"]
        self.columns = {k: data[k][rows] for k in ("image_index", *TEXT_KEYS)}
        self.process_index = process_index

    def make_iterator(self, *, batch_size: int, seed: int = 0,
                      state: dict | None = None) -> ArrayBatches:
        """Like `input_pipeline.make_iterator`: resumable from a previous ``state()``."""
        start = core.resume_position(state, seed=seed, batch_size=batch_size)
        return ArrayBatches(self, batch_size, seed, start)


class ArrayBatches:
    """Shuffled numpy batches of an `ArraySource`, with the `state()` of the real iterator."""

    def __init__(self, source: ArraySource, batch_size: int, seed: int, examples: int):
        self.source, self.batch_size, self.seed, self.examples = source, batch_size, seed, examples
        self._epoch, self._order = -1, None

    def __iter__(self) -> ArrayBatches:
        return self

    def order(self, epoch: int) -> np.ndarray:
        """The rows of this process's share in the order epoch `epoch` visits them."""
        if epoch != self._epoch:
            n = len(self.source.columns["text"])
            rng = np.random.default_rng([self.seed, self.source.process_index, epoch])
            self._epoch, self._order = epoch, rng.permutation(n)
        return self._order

    def __next__(self) -> dict[str, np.ndarray]:
        cols, n = self.source.columns, len(self.source.columns["text"])
        rows = []
        for position in range(self.examples, self.examples + self.batch_size):
            rows.append(self.order(position // n)[position % n])
        rows = np.asarray(rows)
        self.examples += self.batch_size
        batch = {k: cols[k][rows] for k in TEXT_KEYS}
        image = _from_uint8(self.source.images[cols["image_index"][rows]])
        batch["image"] = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
        return batch

    def state(self) -> dict:
        """{"examples", "seed", "batch_size"}, as `input_pipeline.DataIterator.state`."""
        return {"examples": self.examples, "seed": self.seed, "batch_size": self.batch_size}
