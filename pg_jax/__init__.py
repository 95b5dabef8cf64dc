"""pg_jax: fine-tune PaliGemma 1 and 2 on document VQA with JAX/Flax.

Public entry points:
  pg_jax.load(path, **overrides) -> (model, params)   big_vision .npz or HF dir
  pg_jax.decode(model, params, batch, ...) -> tokens   jitted KV-cache decoding
"""

from pg_jax.decode import decode
from pg_jax.models.loader import load

__all__ = ["decode", "load"]
