"""A tiny PaliGemma, its optimizer and a fake batch, shared by the trainer tests."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pg_jax import optim
from pg_jax.models import paligemma, variants

RES, TEXT_LEN, VOCAB = 28, 12, 2413


def model(dtype="float32"):
    return paligemma.Model(
        **variants.get_config("tiny_pg1", res=RES, vocab_size=VOCAB, dtype=dtype)
    )


def params(m, seed=0):
    dummy = (
        jnp.zeros((1, RES, RES, 3)),
        jnp.zeros((1, 2), jnp.int32),
        jnp.zeros((1, 2), jnp.int32),
    )
    return jax.jit(m.init)(jax.random.PRNGKey(seed), *dummy)["params"]


def opt_config(freeze="attn", optax_name="adam", lr=1e-2, wd=0.0, clip=1.0):
    return ml_collections.ConfigDict(
        {
            "schedule": [
                (r, {"decay_type": "cosine", "warmup_steps": 1} if t else None)
                for r, t in optim.PRESETS[freeze]
            ],
            "optax_name": optax_name,
            "optax": {},
            "lr": lr,
            "wd": wd,
            "wd_mults": [(".*/kernel$", 1.0), (".*_einsum/w$", 1.0)],
            "grad_clip_norm": clip,
        }
    )


def batch(b=4, seed=0):
    """Prompt of 4 tokens, answer of 3 + eos, padding: the pipeline's layout."""
    rng = np.random.default_rng(seed)
    n = TEXT_LEN + 1
    text = np.zeros((b, n), np.int32)
    text[:, 0] = 2
    text[:, 1:8] = rng.integers(3, 300, (b, 7))
    text[:, 8] = 1
    mask_ar = np.zeros((b, n), np.int32)
    mask_ar[:, 5:] = 1
    mask_loss = np.zeros((b, n), np.int32)
    mask_loss[:, 5:9] = 1
    mask_input = np.zeros((b, n), np.int32)
    mask_input[:, :9] = 1
    image = rng.uniform(-1, 1, (b, RES, RES, 3)).astype(np.float32)
    return {
        "image": image,
        "text": text,
        "mask_ar": mask_ar,
        "mask_loss": mask_loss,
        "mask_input": mask_input,
    }
