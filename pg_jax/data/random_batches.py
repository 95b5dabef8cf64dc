"""Random training batches: the trainer at full size with no data files and no TensorFlow.

``python -m pg_jax.train --config configs/docvqa.py:data=random,variant=pg1_3b,res=448`` trains
on these, so the trainer's own examples/s and MFU can be read on a machine that has a GPU but no
dataset or TensorFlow (the benchmark machine), and compared with ``scripts/bench_train_step.py``.

Each example has the layout of configs/docvqa.py's training pp with no padding: ``text``
int32[L+1] = ``[bos]`` + prompt tokens + ``answer_len`` answer tokens (the last is eos), ``mask_ar`` and
``mask_loss`` set on the answer, ``mask_input`` all set, and a uniform-noise image in [-1, 1].
Each row is a function of (seed, its index in the global stream), so a resumed run continues the
same stream, and P processes that each draw ``batch_size`` rows (``process_index`` p of
``process_count`` P) feed the same global batches as one process drawing ``P * batch_size``:
a multi-host run trains on what a single-host run of the same global batch does.
"""

from __future__ import annotations

import numpy as np

from pg_jax.data import core

BOS, EOS, FIRST_PIECE = 2, 1, 3


class RandomSource:
    """An endless stream of random examples (`num_examples` is only used for epoch counting)."""

    def __init__(self, *, res: int, text_len: int, vocab_size: int, answer_len: int = 8,
                 num_examples: int = 1_000_000, process_index: int = 0,
                 process_count: int = 1):
        if not 1 <= answer_len <= text_len - 1:
            raise ValueError(f"answer_len {answer_len} must be in [1, text_len - 1 = "
                             f"{text_len - 1}]")
        self.res, self.text_len, self.vocab_size = res, text_len, vocab_size
        self.answer_len, self.num_examples = answer_len, num_examples
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        # Each process draws its own rows of the global batch.
        self.process_index, self.process_count = process_index, process_count

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
        # This process's rows of global batch number examples / b (P * b rows, process-major).
        first = (self.examples // b * s.process_count + s.process_index) * b
        rows = [np.random.default_rng([self.seed, first + i]) for i in range(b)]
        n = s.text_len + 1
        text = np.stack([r.integers(FIRST_PIECE, s.vocab_size, n, dtype=np.int32) for r in rows])
        text[:, 0] = BOS
        text[:, -1] = EOS
        answer = (np.arange(n) >= n - s.answer_len).astype(np.int32)
        # float32 draws in place, then [0, 1) -> [-1, 1) in place: no copies of the batch.
        image = np.empty((b, s.res, s.res, 3), np.float32)
        for r, out in zip(rows, image):
            r.random(dtype=np.float32, out=out)
        image *= 2
        image -= 1
        self.examples += b
        return {
            "image": image,
            "text": text,
            "mask_ar": np.repeat(answer[None], b, 0),
            "mask_loss": np.repeat(answer[None], b, 0),
            "mask_input": np.ones((b, n), np.int32),
            "truncated": np.zeros((b,), np.int32),
        }

    def state(self) -> dict:
        """{"examples", "seed", "batch_size"}, as `input_pipeline.DataIterator.state`."""
        return {"examples": self.examples, "seed": self.seed, "batch_size": self.batch_size}
