"""Text preprocessing ops: prompt, answer choice, tokenization, fitting, masked concat.

The DocVQA training example (big_vision's DocVQA transfer layout), for text_len 32:

  text      = [bos] question... "\\n" answer... [eos] pad...     (length text_len + 1 = 33)
  mask_ar   =  0    0...         0    1...      1     1...       (0 prefix, 1 suffix and padding)
  mask_loss =  0    0...         0    1...      1     0...       (answer and eos only)
  mask_input=  1    1...         1    1...      1     0...       (real tokens)

built by `prompt|choice|tok(prefix, bos)|tok(septok)|tok(suffix, eos)|fit|masked_concat|tolen`.
Tokenization runs the SentencePiece wrapper through `tf.numpy_function` (no tensorflow_text).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from pg_jax.pp.builder import Example, Op
from pg_jax.pp.registry import Registry
from pg_jax.pp.tokenizer import Tokenizer


@functools.cache
def _tokenizer(model: str | None) -> Tokenizer:
    # Loaded once per process and model path; ops built from many pp strings share it.
    return Tokenizer(model)


def _yes(flag) -> bool:
    # big_vision writes bos="yes"; plain booleans are accepted too.
    return flag in (True, "yes", "true", "True", 1)


@Registry.register("preprocess_ops.prompt")
def get_prompt(template: str = "{question}", inkey: str = "question", outkey: str = "prefix") -> Op:
    """Builds the prompt from the question: "{question}" (big_vision) or "answer en {question}".

    Newlines inside the question become spaces: "\\n" is the prompt/answer separator.
    """
    if template.count("{question}") != 1:
        raise ValueError(f"prompt template must contain '{{question}}' once: {template!r}")
    before, after = template.split("{question}")

    def _prompt(data: Example) -> Example:
        q = tf.strings.regex_replace(data[inkey], "\n", " ")
        return {**data, outkey: tf.strings.join([before, q, after])}

    return _prompt


@Registry.register("preprocess_ops.choice")
def get_choice(inkey: str = "answers", outkey: str = "suffix", seed_key: str = "_seed") -> Op:
    """Draws one element of the string list `inkey` uniformly; "" for an empty list.

    The draw is stateless, seeded by the example's `seed_key` (int64[2]); the input pipeline sets
    it from (seed, epoch, example index), so the choice differs per epoch yet reproduces exactly
    after a restart. Without `seed_key` the seed is (0, 0).
    """

    def _choice(data: Example) -> Example:
        x = data[inkey]
        n = tf.shape(x)[0]
        seed = data.get(seed_key, tf.zeros([2], tf.int64))
        i = tf.random.stateless_uniform(
            [], seed=seed, minval=0, maxval=tf.maximum(n, 1), dtype=tf.int32
        )
        out = tf.cond(n > 0, lambda: tf.gather(x, i), lambda: tf.constant(""))
        return {**data, outkey: out}

    return _choice


@Registry.register("preprocess_ops.tok")
def get_tok(
    key: str | None = None,
    *,
    inkey: str | None = None,
    outkey: str | None = None,
    text: str | None = None,
    bos: str | bool = "no",
    eos: str | bool = "no",
    model: str | None = None,
) -> Op:
    """Tokenizes a string into int32 ids, optionally adding bos/eos.

    Args:
      key: in- and output key (`inkey`/`outkey` override it).
      text: tokenize this constant instead of a key (e.g. the "\\n" separator into "septok").
      bos, eos: "yes" to prepend bos / append eos.
      model: SentencePiece model path; None is the small project tokenizer.

    Returns:
      The op.
    """
    tok = _tokenizer(model)
    head = [tok.bos_id] if _yes(bos) else []
    tail = [tok.eos_id] if _yes(eos) else []
    inkey, outkey = inkey or key, outkey or key
    if text is not None:
        const = tf.constant(head + tok.encode(text) + tail, tf.int32)
        return lambda data: {**data, outkey: const}

    def _encode(s) -> np.ndarray:
        # Graph mode passes bytes, eager mode a 0-d object array.
        s = s.item() if isinstance(s, np.ndarray) else s
        s = s.decode("utf-8") if isinstance(s, bytes) else s
        return np.asarray(head + tok.encode(s) + tail, np.int32)

    def _tok(data: Example) -> Example:
        ids = tf.numpy_function(_encode, [data[inkey]], tf.int32, stateful=False)
        return {**data, outkey: tf.ensure_shape(ids, [None])}

    return _tok


@Registry.register("preprocess_ops.fit")
def get_fit(
    length: int,
    *,
    prefix: str = "prefix",
    fixed: tuple[str, ...] = ("septok",),
    suffix: str | None = "suffix",
    min_prefix: int | None = None,
    outkey: str = "truncated",
) -> Op:
    """Cuts token keys so that prefix + fixed + suffix fit in `length`.

    The prefix loses its tail first (it keeps its head and bos), down to `min_prefix` tokens
    (default length // 2); if still too long, the suffix loses tokens before its last one, so
    the answer keeps its eos. Writes int32 `outkey` = 1 if anything was cut, so the pipeline can
    count truncations.
    """
    keep_min = length // 2 if min_prefix is None else min_prefix

    def _fit(data: Example) -> Example:
        p = data[prefix]
        n_fixed = sum(tf.shape(data[k])[0] for k in fixed) if fixed else 0
        s = data[suffix] if suffix else tf.zeros([0], p.dtype)
        n_p, n_s = tf.shape(p)[0], tf.shape(s)[0]
        over = tf.maximum(n_p + n_fixed + n_s - length, 0)
        cut_p = tf.minimum(over, tf.maximum(n_p - keep_min, 0))
        p = p[: n_p - cut_p]
        cut_s = tf.minimum(over - cut_p, tf.maximum(n_s - 1, 0))
        s = tf.concat([s[: n_s - 1 - cut_s], s[n_s - 1 :]], 0) if suffix else s
        out = {**data, prefix: p, outkey: tf.cast(over > 0, tf.int32)}
        if suffix:
            out[suffix] = s
        return out

    return _fit


@Registry.register("preprocess_ops.masked_concat")
def get_masked_concat(keys: list[str], outkey: str = "text", **masks: list[int]) -> Op:
    """Concatenates token keys into `outkey` and builds one int32 mask per `masks` entry.

    Example: masked_concat(["prefix", "septok", "suffix"], mask_ar=[0, 0, 1],
    mask_loss=[0, 0, 1]) gives mask_ar 0 over prefix and separator, 1 over the answer.
    """
    for name, values in masks.items():
        if len(values) != len(keys):
            raise ValueError(f"masked_concat: {name} has {len(values)} values for {len(keys)} keys")

    def _masked_concat(data: Example) -> Example:
        out = {**data, outkey: tf.concat([data[k] for k in keys], 0)}
        for name, values in masks.items():
            parts = [
                tf.fill(tf.shape(data[k]), tf.constant(v, tf.int32))
                for k, v in zip(keys, values, strict=True)
            ]
            out[name] = tf.concat(parts, 0)
        return out

    return _masked_concat
