"""pg_jax: fine-tune PaliGemma 1 and 2 on document VQA with JAX/Flax.

Public entry points:
  pg_jax.load(path, **overrides) -> (model, params)   big_vision .npz or HF dir
  pg_jax.decode(model, params, batch, ...) -> tokens   jitted KV-cache decoding
  pg_jax.decoding_params(model, params) -> params      convert once for many decode calls
"""

from pg_jax.decode import decode, decoding_params
from pg_jax.models.loader import load

__all__ = ["decode", "decoding_params", "load"]
