"""pg_jax.decode against an uncached argmax loop; eos stopping; seeded sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pg_jax
from pg_jax import predict_fns
from tests import tiny_model

VOCAB, RES, STEPS = 97, 28, 6
NEVER = -1  # An eos id no token equals: rows never stop early.


def _setup(variant):
    model, params = tiny_model.make(variant, res=RES, vocab_size=VOCAB)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (3, RES, RES, 3)).astype(np.float32)
    # Right-padded prompts of lengths 5, 2 and 7 share a batch.
    lengths = [5, 2, 7]
    text = np.zeros((3, 8), np.int32)
    for i, n in enumerate(lengths):
        text[i, :n] = rng.integers(3, VOCAB, n)
        text[i, 0] = 2  # bos
    mask = np.arange(8)[None] < np.array(lengths)[:, None]
    batch = {
        "image": image,
        "text": text,
        "mask_input": mask,
        "mask_ar": np.zeros_like(text),
    }
    return model, params, batch, lengths


# Each sampler and variant compiles its own decode loop (seconds on CPU): the equivalence runs
# for both PaliGemma generations, the rest on PaliGemma 1 only.
@pytest.fixture(scope="module", params=["tiny_pg1", "tiny_pg2"])
def tiny_both(request):
    return _setup(request.param)


@pytest.fixture(scope="module")
def tiny():
    return _setup("tiny_pg1")


def _uncached_greedy(model, params, image, prompt, steps, length):
    """Argmax of a full forward (no cache) over prompt + generated tokens, one token at a time.

    The sequence is padded to ``length`` so one compiled forward serves every step and row; the
    not-yet-generated positions are masked out of the attention by ``input_mask``.
    """
    n = len(prompt)
    text = np.zeros((1, length), np.int32)
    text[0, :n] = prompt
    mask_ar = (np.arange(length) >= n).astype(np.int32)[None]
    for t in range(steps):
        valid = np.arange(length)[None] < n + t
        logits = _forward(model, params, image[None], text, mask_ar, valid)
        text[0, n + t] = int(jnp.argmax(logits[0, n + t - 1]))
    return text[0, n : n + steps].tolist()


@functools.partial(jax.jit, static_argnames="model")
def _forward(model, params, image, text, mask_ar, valid):
    return model.apply({"params": params}, image, text, mask_ar, valid)[0]


def test_greedy_equals_uncached_argmax_loop_with_mixed_prompt_lengths(tiny_both):
    model, params, batch, lengths = tiny_both
    out = np.asarray(pg_jax.decode(model, params, batch, max_decode_len=STEPS, eos_id=NEVER))
    assert out.shape == (3, STEPS) and out.dtype == np.int32
    for i, n in enumerate(lengths):
        ref = _uncached_greedy(model, params, batch["image"][i], batch["text"][i, :n], STEPS, 16)
        assert out[i].tolist() == ref, f"row {i} (prompt length {n})"
    # The predict_fns entry is the same function.
    via_fns = predict_fns.get_all(model)["decode"](
        params, batch, max_decode_len=STEPS, eos_id=NEVER
    )
    np.testing.assert_array_equal(np.asarray(via_fns), out)


def test_stops_at_eos_per_row(tiny):
    model, params, batch, _ = tiny
    free = np.asarray(pg_jax.decode(model, params, batch, max_decode_len=STEPS, eos_id=NEVER))
    # Declare a token that row 0 first produces at step k >= 1 to be "eos": row 0 stops after k
    # steps, the other rows wherever that token first appears in theirs (or at the end).
    k = next(k for k in range(1, STEPS) if free[0, k] not in free[0, :k])
    eos = int(free[0, k])
    out = np.asarray(pg_jax.decode(model, params, batch, max_decode_len=STEPS, eos_id=eos))
    stops = []
    for i in range(len(free)):
        hits = np.flatnonzero(free[i] == eos)
        stop = hits[0] + 1 if len(hits) else STEPS
        stops.append(int(stop))
        np.testing.assert_array_equal(out[i, :stop], free[i, :stop])
        assert (out[i, stop:] == 0).all(), f"row {i} continued after eos: {out[i]}"
    assert stops[0] == k + 1 < STEPS
    assert len(set(stops)) > 1, f"all rows stopped together at {stops}: not a mixed-length case"


def test_sampling_is_reproducible_with_a_seed(tiny):
    model, params, batch, _ = tiny
    kw = {"max_decode_len": STEPS, "eos_id": NEVER, "sampler": "temperature", "temperature": 5.0}
    a = np.asarray(pg_jax.decode(model, params, batch, seed=3, **kw))
    b = np.asarray(pg_jax.decode(model, params, batch, seed=3, **kw))
    c = np.asarray(pg_jax.decode(model, params, batch, seed=4, **kw))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any(), "another seed gave the same 18 tokens at temperature 5"
    assert ((a >= 0) & (a < VOCAB)).all()


def test_degenerate_samplers_equal_greedy(tiny):
    model, params, batch, _ = tiny
    kw = {"max_decode_len": STEPS, "eos_id": NEVER}
    greedy = np.asarray(pg_jax.decode(model, params, batch, **kw))
    top1 = np.asarray(pg_jax.decode(model, params, batch, sampler="top_k", top_k=1, seed=7, **kw))
    top_p = np.asarray(
        pg_jax.decode(model, params, batch, sampler="top_p", top_p=1e-6, seed=7, **kw)
    )
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(top_p, greedy)


def test_prefix_prompt_takes_the_key_lengths_mask_only_when_it_is_one():
    from pg_jax.decode import _is_right_padded_prefix as is_prefix

    right = np.array([[1, 1, 0], [1, 1, 1]])
    assert is_prefix(right, np.zeros((2, 3), np.int32))
    assert is_prefix(None, None) and is_prefix(right, None)
    assert not is_prefix(np.array([[0, 1, 1], [1, 1, 1]]), None)  # left padding
    assert not is_prefix(right, np.array([[0, 0, 1], [0, 0, 0]]))  # a causal token


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_prefill_with_key_lengths_equals_the_dense_prefix_mask(impl):
    # "xla" takes the lengths natively (as cuDNN does on a GPU); einsum expands them.
    model, params, batch, lengths = _setup("tiny_pg1")
    model = model.clone(llm={**model.llm, "attention_impl": impl})
    args = (batch["image"], batch["text"], batch["mask_input"], batch["mask_ar"])
    out = {}
    for prefix in (False, True):
        out[prefix] = model.apply({"params": params}, *args, cache_size=20,
                                  prompt_is_prefix=prefix, method=type(model).prefill)
    np.testing.assert_allclose(out[True][0], out[False][0], atol=1e-5)
    valid = model.num_image_tokens + np.array(lengths)
    for i, n in enumerate(valid):  # the cache rows that later steps read
        np.testing.assert_allclose(out[True][1]["k"][:, i, :n], out[False][1]["k"][:, i, :n],
                                   atol=1e-5)
        np.testing.assert_allclose(out[True][1]["v"][:, i, :n], out[False][1]["v"][:, i, :n],
                                   atol=1e-5)


def test_params_converted_once_decode_the_same(tiny):
    model, params, batch, _ = tiny
    kw = {"max_decode_len": STEPS, "eos_id": NEVER}
    once = pg_jax.decoding_params(model, params)
    assert "layers" not in once["llm"] and "qkv_fused" in once["llm"]["layers_0"]["attn"]
    assert once["img"] is params["img"]  # shared, not copied
    np.testing.assert_array_equal(np.asarray(pg_jax.decode(model, once, batch, **kw)),
                                  np.asarray(pg_jax.decode(model, params, batch, **kw)))
    assert pg_jax.decoding_params(model, once) is once


def test_a_batch_of_one_decodes_as_in_a_larger_batch(tiny):
    # One row takes another matmul path in the decode steps (gemma._matmul pads it to two).
    model, params, batch, _ = tiny
    kw = {"max_decode_len": STEPS, "eos_id": NEVER}
    full = np.asarray(pg_jax.decode(model, params, batch, **kw))
    for i in range(2):
        one = np.asarray(pg_jax.decode(model, params, {k: v[i : i + 1] for k, v in batch.items()},
                                       **kw))
        np.testing.assert_array_equal(one[0], full[i])
