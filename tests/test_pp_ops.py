"""Each pp op on tiny explicit inputs, eagerly and inside tf.data; the full DocVQA layout."""

import numpy as np
import pytest
import tensorflow as tf
from tests.conftest import png_bytes

from pg_jax.pp import builder
from pg_jax.pp.registry import Registry, parse_name
from pg_jax.pp.tokenizer import Tokenizer


def run_both(pp: str, example: dict) -> tuple[dict, dict]:
    """Applies the op string eagerly and inside a tf.data map; returns both outputs as numpy."""
    fn = builder.get_preprocess_fn(pp)
    eager = {
        k: np.asarray(v) for k, v in fn({k: tf.constant(v) for k, v in example.items()}).items()
    }
    ds = tf.data.Dataset.from_tensors(example).map(fn)
    graph = next(ds.as_numpy_iterator())
    for k in eager:
        np.testing.assert_array_equal(eager[k], graph[k], err_msg=k)
    return eager, graph


def test_parse_name():
    assert parse_name("resize(448, antialias=True)") == ("resize", (448,), {"antialias": True})
    assert parse_name("a.b.keep") == ("a.b.keep", (), {})
    with pytest.raises(ValueError):
        parse_name("resize(x)")  # Not a literal.
    builder.import_modules()
    with pytest.raises(KeyError, match="Unknown"):
        Registry.lookup("preprocess_ops.nope")


def test_general_ops():
    out, _ = run_both("copy('a', 'b')|setdefault('c', 5)|drop('a')", {"a": [1, 2]})
    assert sorted(out) == ["b", "c"] and out["c"] == 5
    np.testing.assert_array_equal(out["b"], [1, 2])
    out, _ = run_both("keep('a')", {"a": 1, "b": 2})
    assert list(out) == ["a"]
    out, _ = run_both(
        "tolen(4, key='a')|tolen(2, key='b', pad_value=7)|tolen(3, key='s', pad_value='')",
        {"a": [1, 2], "b": [1, 2, 3], "s": ["x"]},
    )
    np.testing.assert_array_equal(out["a"], [1, 2, 0, 0])
    np.testing.assert_array_equal(out["b"], [1, 2])
    assert list(out["s"]) == [b"x", b"", b""]


def test_image_ops():
    ex = {"image": png_bytes(h=4, w=6, value=255, mode="L")}
    out, _ = run_both("decode", ex)
    assert out["image"].shape == (4, 6, 3) and out["image"].dtype == np.uint8
    out, _ = run_both("decode|resize(2)|value_range(-1, 1)", ex)
    assert out["image"].shape == (2, 2, 3)
    np.testing.assert_allclose(out["image"], 1.0, atol=1e-5)
    out, _ = run_both("value_range(0, 1)", {"image": np.array([[[0, 51, 255]]], np.uint8)})
    np.testing.assert_allclose(out["image"], [[[0, 0.2, 1]]], atol=1e-6)
    # A uint8 image already at the target size passes decode and is only cast by resize.
    raw = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    out, _ = run_both("decode|resize(2)", {"image": raw})
    np.testing.assert_array_equal(out["image"], raw.astype(np.float32))
    # Antialiased downscale of a 4x4 checkerboard to 1x1 is its mean.
    board = np.indices((4, 4)).sum(0) % 2 * 255
    img = np.repeat(board[..., None], 3, -1).astype(np.uint8)
    out, _ = run_both("resize(1)", {"image": img})
    np.testing.assert_allclose(out["image"], 127.5, atol=1)


def test_text_ops():
    tok = Tokenizer()
    out, _ = run_both("prompt('answer en {question}')", {"question": "Total?\nnow"})
    assert out["prefix"] == b"answer en Total? now"
    out, _ = run_both(
        "tok(key='q', bos='yes', eos='yes')|tok(key='sep', text='\\n')", {"q": "What is the total?"}
    )
    assert list(out["q"]) == [2] + tok.encode("What is the total?") + [1]
    assert list(out["sep"]) == [tok.newline_id]
    out, _ = run_both(
        "masked_concat(['a', 'b'], outkey='t', m=[0, 1], n=[1, 1])", {"a": [5, 6], "b": [7]}
    )
    np.testing.assert_array_equal(out["t"], [5, 6, 7])
    np.testing.assert_array_equal(out["m"], [0, 0, 1])
    np.testing.assert_array_equal(out["n"], [1, 1, 1])


def test_choice_is_seeded():
    ex = {"answers": ["a", "b", "c", "d"], "_seed": np.array([0, 0], np.int64)}
    picks = set()
    for i in range(20):
        ex["_seed"] = np.array([3, i], np.int64)
        out, _ = run_both("choice", ex)
        out2, _ = run_both("choice", ex)
        assert out["suffix"] == out2["suffix"]  # Same seed, same pick.
        picks.add(out["suffix"].item())
    assert len(picks) > 1
    out, _ = run_both("choice", {"answers": np.array([], str)})
    assert out["suffix"] == b""


def test_fit_truncates_prefix_head_and_keeps_eos():
    ex = {"prefix": [2, 10, 11, 12, 13, 14], "septok": [4], "suffix": [20, 21, 1]}
    out, _ = run_both("fit(8)", ex)  # 10 tokens -> 8: the prefix loses its tail.
    np.testing.assert_array_equal(out["prefix"], [2, 10, 11, 12])
    np.testing.assert_array_equal(out["suffix"], [20, 21, 1])
    assert out["truncated"] == 1
    out, _ = run_both("fit(6, min_prefix=3)", ex)  # Prefix floor 3, then the answer is cut.
    np.testing.assert_array_equal(out["prefix"], [2, 10, 11])
    np.testing.assert_array_equal(out["suffix"], [20, 1])
    out, _ = run_both("fit(20)", ex)
    assert out["truncated"] == 0 and len(out["prefix"]) == 6


def _train_pp(res: int, text_len: int) -> str:
    from configs import docvqa

    return docvqa.get_config(f"res={res},text_len={text_len}").input.pp


def test_full_train_example_layout():
    """[bos] question "\\n" answer [eos] pad..., checked position by position."""
    tok = Tokenizer()
    q, a = tok.encode("What is the total?"), tok.encode("$12")
    ex = {
        "image": png_bytes(8, 8),
        "question": "What is the total?",
        "answers": ["$12"],
        "_seed": np.array([0, 0], np.int64),
    }
    out, _ = run_both(_train_pp(4, 16), ex)
    n_p, n_s = 1 + len(q) + 1, len(a) + 1
    want = [2] + q + [tok.newline_id] + a + [1] + [0] * (17 - n_p - n_s)
    np.testing.assert_array_equal(out["text"], want)
    np.testing.assert_array_equal(out["mask_ar"], [0] * n_p + [1] * (17 - n_p))
    np.testing.assert_array_equal(out["mask_loss"], [0] * n_p + [1] * n_s + [0] * (17 - n_p - n_s))
    np.testing.assert_array_equal(out["mask_input"], [1] * (n_p + n_s) + [0] * (17 - n_p - n_s))
    assert out["image"].shape == (4, 4, 3) and out["truncated"] == 0


def test_eval_example_layout_and_truncation():
    tok = Tokenizer()
    q = tok.encode("What is the total?")
    ex = {
        "image": png_bytes(8, 8),
        "question": "What is the total?",
        "answers": ["$12", "12"],
        "question_id": 7,
    }
    from configs import docvqa

    pp = docvqa.get_config("res=4,text_len=12").evals["docvqa/val"]["pp_fn"]
    out, _ = run_both(pp, {**ex, "question_types": ["form"]})
    n_p = len(q) + 2
    np.testing.assert_array_equal(out["text"], [2] + q + [tok.newline_id] + [0] * (12 - n_p))
    np.testing.assert_array_equal(out["mask_ar"], [0] * n_p + [1] * (12 - n_p))
    assert list(out["answers"]) == [b"$12", b"12"] + [b""] * 14 and out["question_id"] == 7
    assert list(out["question_types"]) == [b"form"] + [b""] * 7
    # An overlong training question keeps its head; the answer keeps its eos; it is counted.
    long_q = " ".join(["total"] * 40)
    ex = {"image": png_bytes(8, 8), "question": long_q, "answers": ["12"]}
    out, _ = run_both(_train_pp(4, 16), ex)
    assert out["truncated"] == 1 and out["text"][0] == 2
    a = tok.encode("12") + [1]
    assert list(out["text"][-len(a) :]) == a  # The sequence is full: the answer ends it.
    assert out["mask_loss"].sum() == len(a) and list(out["text"][:3]) == [2] + tok.encode("total")
