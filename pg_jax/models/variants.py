"""Named PaliGemma architectures: the one place their numbers live.

``get_config("pg2_3b", res=448)`` returns the keyword arguments of
``paligemma.Model`` (``{"img": {...}, "llm": {...}}``) as an ml_collections
ConfigDict, so configs can override fields (``llm.dtype``, ``llm.remat_policy``).

Sources: big_vision ``models/ppp/gemma.py`` (LLM variants) and
``models/vit.py`` (So400m/14); the tiny variants are this project's, used by
the tests and the embedded default. Their vocabulary is set by the tokenizer.
"""

import ml_collections

# SigLIP So400m/14, the image tower of every released PaliGemma.
SO400M = dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14)
TINY_VIT = dict(width=128, depth=4, mlp_dim=256, num_heads=4, patch_size=14)

REAL_VOCAB = 257_152

LLMS = {
    # PaliGemma 1: Gemma 2B (multi-query attention).
    "gemma_2b": dict(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1,
                     head_dim=256),
    # PaliGemma 2: Gemma 2 (post-norms, soft-caps, grouped-query attention).
    "gemma2_2b": dict(width=2304, depth=26, mlp_dim=9_216, num_heads=8, num_kv_heads=4,
                      head_dim=256),
    "gemma2_9b": dict(width=3584, depth=42, mlp_dim=14_336, num_heads=16, num_kv_heads=8,
                      head_dim=256),
    "gemma2_27b": dict(width=4608, depth=46, mlp_dim=36_864, num_heads=32, num_kv_heads=16,
                       head_dim=128, query_pre_attn_norm="rsqrt_emb_per_head"),
    "tiny_gemma": dict(width=128, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=1,
                       head_dim=32),
    "tiny_gemma2": dict(width=128, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=2,
                        head_dim=32),
}

GEMMA2_EXTRAS = dict(post_norms=True, attn_logits_softcap=50.0)

# variant -> (image tower, LLM, is PaliGemma 2)
VARIANTS = {
    "pg1_3b": ("so400m", "gemma_2b", False),
    "pg2_3b": ("so400m", "gemma2_2b", True),
    "pg2_10b": ("so400m", "gemma2_9b", True),
    "pg2_28b": ("so400m", "gemma2_27b", True),
    "tiny_pg1": ("tiny", "tiny_gemma", False),
    "tiny_pg2": ("tiny", "tiny_gemma2", True),
}

RESOLUTIONS = (224, 448, 896)


def get_config(variant: str, res: int = 224, vocab_size: int | None = None,
               **common) -> ml_collections.ConfigDict:
    """Model kwargs for a named variant.

    Args:
      variant: a key of VARIANTS.
      res: image resolution; the tiny variants also accept other multiples of 14.
      vocab_size: defaults to the real 257152 for released variants and to the
        project's small tokenizer's for tiny ones.
      **common: fields set on both towers, e.g. dtype="bfloat16",
        attention_impl="cudnn", remat_policy="nothing_saveable".

    Returns:
      ConfigDict(img=..., llm=...).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    vit_name, llm_name, is_pg2 = VARIANTS[variant]
    tiny = vit_name == "tiny"
    if not tiny and res not in RESOLUTIONS:
        raise ValueError(f"{variant} exists at resolutions {RESOLUTIONS}, not {res}")
    if vocab_size is None and tiny:
        # Tiny variants go with the project's small tokenizer.
        from pg_jax.pp import tokenizer  # sentencepiece only; no tensorflow

        vocab_size = tokenizer.Tokenizer(tokenizer.get_default_tokenizer_path()).vocab_size
    vocab_size = vocab_size or REAL_VOCAB
    img = dict(SO400M if not tiny else TINY_VIT, image_size=res)
    llm = dict(LLMS[llm_name], vocab_size=vocab_size)
    if is_pg2:
        llm = {**GEMMA2_EXTRAS, **llm}
    for tower in (img, llm):
        tower.update(common)
    return ml_collections.ConfigDict({"img": img, "llm": llm})
