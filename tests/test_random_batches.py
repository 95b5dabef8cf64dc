"""The random training batches: the input pipeline's layout, and a resumable stream."""

import numpy as np
import pytest

from pg_jax.data import random_batches


def test_layout_matches_the_training_pipeline():
    src = random_batches.RandomSource(res=28, text_len=10, vocab_size=50, answer_len=3)
    b = next(src.make_iterator(batch_size=4, seed=1))
    assert b["image"].shape == (4, 28, 28, 3) and b["image"].dtype == np.float32
    assert -1 <= b["image"].min() and b["image"].max() <= 1
    assert b["text"].shape == (4, 11) and b["text"].dtype == np.int32
    assert (b["text"][:, 0] == random_batches.BOS).all()
    assert (b["text"][:, -1] == random_batches.EOS).all()
    assert b["text"][:, 1:-1].min() >= random_batches.FIRST_PIECE and b["text"].max() < 50
    # The answer (scored, causal) is the last 3 positions; every position is a valid input.
    np.testing.assert_array_equal(b["mask_loss"][0], [0] * 8 + [1] * 3)
    np.testing.assert_array_equal(b["mask_ar"], b["mask_loss"])
    assert b["mask_input"].all()


def test_resuming_from_state_continues_the_same_stream():
    src = random_batches.RandomSource(res=14, text_len=6, vocab_size=40, answer_len=2)
    it = src.make_iterator(batch_size=2, seed=3)
    next(it)
    state = it.state()
    expected = next(it)
    resumed = next(src.make_iterator(batch_size=2, seed=3, state=state))
    for k in expected:
        np.testing.assert_array_equal(resumed[k], expected[k])
    assert not np.array_equal(next(it)["text"], expected["text"])  # batches differ
    with pytest.raises(ValueError, match="another seed or batch size"):
        src.make_iterator(batch_size=4, seed=3, state=state)


def test_processes_draw_the_rows_of_one_global_stream():
    """Two processes' rows of each batch, stacked, are one process's batch of twice the size:
    a two-host run trains on the single-host run's global batches."""
    make = lambda i, n: random_batches.RandomSource(  # noqa: E731
        res=14, text_len=6, vocab_size=40, answer_len=2, process_index=i, process_count=n)
    single = make(0, 1).make_iterator(batch_size=4, seed=3)
    parts = [make(i, 2).make_iterator(batch_size=2, seed=3) for i in range(2)]
    for _ in range(3):
        want, got = next(single), [next(p) for p in parts]
        for k in want:
            np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k], err_msg=k)
    assert not np.array_equal(got[0]["text"], got[1]["text"])  # each process its own rows
    with pytest.raises(ValueError, match="process_index 2"):
        make(2, 2)
