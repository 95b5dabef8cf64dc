"""Random training batches: the trainer at full size with no data files and no TensorFlow.

``python -m pg_jax.train --config configs/docvqa.py:data=random,variant=pg1_3b,res=448`` trains
on these, so the trainer's own examples/s and MFU can be read on a machine that has a GPU but no
dataset or TensorFlow (the benchmark machine), and compared with ``scripts/bench_train_step.py``.

Each example has the layout of configs/docvqa.py's training pp with no padding: ``text``
int32[L+1] = ``[bos]`` + prompt tokens + ``answer_len`` answer tokens (the last is eos), ``mask_ar`` and
``mask_loss`` set on the answer, ``mask_input`` all set, and a uniform-noise image in [-1, 1].
Batches are a function of (seed, position), so a resumed run continues the same stream.
"""

from __future__ import annotations

import numpy as np

from pg_jax.data import core

BOS, EOS, FIRST_PIECE = 2, 1, 3


class RandomSource:
    """An endless stream of random examples (`num_examples` is only used for epoch counting)."""

    def __init__(self, *, res: int, text_len: int, vocab_size: int, answer_len: int = 8,
                 num_examples: int = 1_000_000, process_index: int = 0):
        if not 1 <= answer_len <= text_len - 1:
            raise ValueError(f"answer_len {answer_len} must be in [1, text_len - 1 = "
                             f"{text_len - 1}]")
        self.res, self.text_len, self.vocab_size = res, text_len, vocab_size
        self.answer_len, self.num_examples = answer_len, num_examples
        self.process_index = process_index  # each process draws its own rows

    def make_iterator(self, *, batch_size: int, seed: int = 0,
                      state: dict | None = None) -> RandomBatches:
        """Like `input_pipeline.make_iterator`: resumable from a previous ``state()``."""
        start = core.resume_position(state, seed=seed, batch_size=batch_size)
        return RandomBatches(self, batch_size, seed, start)


class RandomBatches:
    """Numpy batches of a `RandomSource`, with the `state()` of the real iterator."""

    def __init__(self, source: RandomSource, batch_size: int, seed: int, examples: int):
        self.source, self.batch_size, self.seed, self.examples = source, batch_size, seed, examples

    def __iter__(self) -> RandomBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        s, b = self.source, self.batch_size
        rng = np.random.default_rng([self.seed, s.process_index, self.examples])
        n = s.text_len + 1
        text = rng.integers(FIRST_PIECE, s.vocab_size, (b, n), dtype=np.int32)
        text[:, 0] = BOS
        text[:, -1] = EOS
        answer = (np.arange(n) >= n - s.answer_len).astype(np.int32)
        self.examples += b
        return {
            # float32 draws directly: a 32 x 448 x 448 x 3 batch in tens of milliseconds.
            "image": rng.random((b, s.res, s.res, 3), dtype=np.float32) * 2 - 1,
            "text": text,
            "mask_ar": np.repeat(answer[None], b, 0),
            "mask_loss": np.repeat(answer[None], b, 0),
            "mask_input": np.ones((b, n), np.int32),
            "truncated": np.zeros((b,), np.int32),
        }

    def state(self) -> dict:
        """{"examples", "seed", "batch_size"}, as `input_pipeline.DataIterator.state`."""
        return {"examples": self.examples, "seed": self.seed, "batch_size": self.batch_size}
