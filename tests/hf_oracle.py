"""Tiny random transformers PaliGemma models: the numerical oracle of the tests.

Each case is a small but complete PaliGemma 1 or 2 architecture. Every weight
is perturbed away from its initial value (HF initialises norms to 0 or 1 and
biases to 0, which would hide mapping mistakes).
"""

import dataclasses

import numpy as np
import torch

from pg_jax.models import hf_convert

VOCAB = 300  # <image> = 300; HF rows padded to 320


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    gemma2: bool
    heads: int
    kv_heads: int
    head_dim: int = 16
    width: int = 64
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_pre_attn_scalar: int | None = None
    image_size: int = 28


CASES = {
    # PaliGemma 1: Gemma with multi-query attention (1 kv head).
    "pg1_mqa": Case("pg1_mqa", gemma2=False, heads=4, kv_heads=1),
    # PaliGemma 1 layout with multi-head attention (qkv stored together).
    "pg1_mha": Case("pg1_mha", gemma2=False, heads=4, kv_heads=4),
    # PaliGemma 2: GQA, attention and final soft-caps on (the hub's values).
    "pg2_gqa_caps": Case("pg2_gqa_caps", gemma2=True, heads=4, kv_heads=2, attn_softcap=50.0,
                         final_softcap=30.0, query_pre_attn_scalar=16),
    # PaliGemma 2 28B's query rule (width / heads != head dim), soft-caps off,
    # a small attention cap so that it actually bites.
    "pg2_27b_rule": Case("pg2_27b_rule", gemma2=True, heads=4, kv_heads=2, head_dim=8,
                         attn_softcap=None, final_softcap=None, query_pre_attn_scalar=16),
    "pg2_small_cap": Case("pg2_small_cap", gemma2=True, heads=4, kv_heads=2, attn_softcap=2.0,
                          final_softcap=3.0, query_pre_attn_scalar=16),
}


def hf_config(case: Case):
    from transformers import PaliGemmaConfig

    text = dict(
        model_type="gemma2" if case.gemma2 else "gemma",
        hidden_size=case.width,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=case.heads,
        num_key_value_heads=case.kv_heads,
        head_dim=case.head_dim,
        vocab_size=hf_convert.hf_vocab_size(VOCAB),
        hidden_activation="gelu_pytorch_tanh",
    )
    if case.gemma2:
        text.update(
            attn_logit_softcapping=case.attn_softcap,
            final_logit_softcapping=case.final_softcap,
            query_pre_attn_scalar=case.query_pre_attn_scalar,
            sliding_window=4096,
        )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=14,
        image_size=case.image_size,
        projection_dim=case.width,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    return PaliGemmaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=VOCAB,
        vocab_size=hf_convert.hf_vocab_size(VOCAB),
        projection_dim=case.width,
        hidden_size=case.width,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )


def make_hf_model(case: Case, seed: int = 0):
    """A float32 eager-attention HF PaliGemma with every weight perturbed."""
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(hf_config(case)).eval()
    model.config._attn_implementation = "eager"  # noqa: SLF001
    model.set_attn_implementation("eager") if hasattr(model, "set_attn_implementation") else None
    with torch.no_grad():
        for name, p in model.named_parameters():
            # A small embedding next to larger layer weights keeps the tied
            # output head from simply repeating the input token, so greedy
            # continuations vary and test the cache.
            scale = 0.05 if "embed_tokens" in name else 0.3
            p.add_(scale * torch.randn_like(p))
    return model


def hf_inputs(image, text, mask_ar, num_image_tokens):
    """pg_jax inputs -> HF kwargs: image tokens in the ids and token_type_ids
    (0 on the image and prompt, 1 on the suffix), always passed: transformers builds the
    prefix-LM mask from them, and without them treats the whole text as prefix."""
    b = text.shape[0]
    ids = np.concatenate([np.full((b, num_image_tokens), VOCAB), np.asarray(text)], axis=1)
    types = np.concatenate([np.zeros((b, num_image_tokens)), np.asarray(mask_ar)], axis=1)
    return dict(
        input_ids=torch.tensor(ids, dtype=torch.long),
        token_type_ids=torch.tensor(types, dtype=torch.long),
        attention_mask=torch.ones(ids.shape, dtype=torch.long),
        pixel_values=torch.tensor(np.asarray(image).transpose(0, 3, 1, 2), dtype=torch.float32),
    )
