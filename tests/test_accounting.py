"""MFU accounting: FLOPs per training example and peak FLOP/s."""

import numpy as np
import pytest

from pg_jax import accounting
from pg_jax.models import loader, paligemma, variants


def test_peak_flops_per_jax_device():
    assert accounting.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert accounting.peak_flops("Tesla T4") == 65e12
    assert accounting.peak_flops("TPU v3") == 61.5e12  # per core: Kaggle's v3-8 has 8
    assert accounting.peak_flops("TPU v5p") == 459e12
    assert accounting.peak_flops("TPU v5 lite") == 197e12
    assert accounting.peak_flops("cpu") is None


def test_attention_only_flops_of_paligemma1_3b_at_224():
    """Counted by hand from Gemma 2B's and So400m's shapes, against the implementation."""
    cfg = variants.get_config("pg1_3b", res=224).to_dict()
    shapes = loader.param_shapes(paligemma.Model(**cfg))
    trainable = tuple(k for k in shapes if k.startswith("llm/layers/attn/"))
    text, loss, patches = 32, 8, 256
    tokens = patches + text
    d, f, heads, hd, depth, vocab = 2048, 16384, 8, 256, 18, 257152
    attn = heads * d * hd + 2 * d * hd + heads * hd * d  # q, kv (one kv head), output
    frozen_layer = 2 * d * f + f * d + 2 * d  # GeGLU gate|up, down, two norms
    llm = 6 * attn * depth * tokens + 4 * (frozen_layer * depth + d) * tokens
    vit = sum(
        int(np.prod(v.shape))
        for k, v in shapes.items()
        if k.startswith("img/") and "pos_embedding" not in k
    )
    expected = (
        llm
        + 2 * vit * patches  # frozen image tower: forward only
        + 3 * 4 * tokens**2 * heads * hd * depth  # LLM attention, forward and backward
        + 4 * patches**2 * 1152 * 27  # ViT attention, forward only
        + 4 * vocab * d * loss  # tied head at the loss positions, forward + input gradient
    )
    got = accounting.train_flops_per_example(cfg, shapes, trainable, text, loss)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got / 1e12 == pytest.approx(2.655, abs=5e-4)  # what bench_train_step.py printed
    # Training the whole LLM counts every LLM weight at 6N instead.
    all_llm = tuple(k for k in shapes if k.startswith("llm/layers/"))
    more = accounting.train_flops_per_example(cfg, shapes, all_llm, text, loss)
    assert more - got == pytest.approx(2 * frozen_layer * depth * tokens, rel=1e-12)


class _Device:
    def __init__(self, stats):
        self._stats = stats

    def memory_stats(self):
        return self._stats


def test_measured_peak_is_the_largest_reporting_devices():
    devices = [_Device({"peak_bytes_in_use": 5, "bytes_in_use": 9}), _Device(None),
               _Device({"peak_bytes_in_use": 7}), _Device({"bytes_in_use": 99})]
    assert accounting.measured_peak_bytes(devices) == 7
    # CPU devices report no memory statistics: no figure rather than a zero.
    assert accounting.measured_peak_bytes([_Device(None), _Device({})]) is None
