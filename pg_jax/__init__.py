"""pg_jax: fine-tune PaliGemma 1 and 2 on document VQA with JAX/Flax.

Public entry points:
  pg_jax.load(path, **overrides) -> (model, params)   big_vision .npz or HF dir
  pg_jax.decode(model, params, batch, ...) -> tokens   jitted KV-cache decoding
  pg_jax.decoding_params(model, params) -> params      convert once for many decode calls
"""

import os

# TensorFlow (only the input pipeline uses it) prints a oneDNN notice and absl start-up lines
# on import, and C++ INFO logs while reading data. Quiet by default, before any pg_jax module
# can import it; a value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from pg_jax.decode import decode, decoding_params  # noqa: E402
from pg_jax.models.loader import load  # noqa: E402

__all__ = ["decode", "decoding_params", "load"]
