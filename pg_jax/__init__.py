"""pg_jax: fine-tune PaliGemma 1 and 2 on document VQA with JAX/Flax."""
