"""A tiny random PaliGemma whose greedy continuations vary (for decode and evaluator tests).

Flax's default init makes the token embedding dominate the residual stream (Gemma scales it by
sqrt(width)), so a freshly initialised model just repeats its last prompt token: useless for
testing eos handling. Normal weights with a small embedding give varied continuations.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pg_jax.models import paligemma, variants


def make(variant: str = "tiny_pg1", res: int = 28, vocab_size: int = 97, seed: int = 0):
    """Returns (model, params) of a tiny variant with N(0, 0.3) weights, N(0, 0.05) embedding."""
    model = paligemma.Model(**variants.get_config(variant, res=res, vocab_size=vocab_size))
    shapes = jax.eval_shape(
        model.init,
        jax.random.PRNGKey(0),
        jnp.zeros((1, res, res, 3)),
        jnp.zeros((1, 2), jnp.int32),
        jnp.zeros((1, 2), jnp.int32),
    )["params"]
    flat = flax.traverse_util.flatten_dict(shapes, sep="/")
    rng = np.random.default_rng(seed)  # numpy: jax.random would compile once per shape
    params = {}
    for name, s in sorted(flat.items()):
        std = 0.05 if "embedder" in name else 0.3
        params[name] = jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
    return model, flax.traverse_util.unflatten_dict(params, sep="/")
