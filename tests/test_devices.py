"""What `auto` picks per device (fake devices), and bfloat16 products on the CPU backend."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pg_jax import devices
from pg_jax.models import attention, gemma


def _gpu(kind, capability):
    return types.SimpleNamespace(platform="gpu", device_kind=kind, compute_capability=capability)


T4, P100, A100 = _gpu("Tesla T4", "7.5"), _gpu("Tesla P100-PCIE-16GB", "6.0"), _gpu("A100", "8.0")
TPU = types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")
CPU = types.SimpleNamespace(platform="cpu", device_kind="cpu")


@pytest.mark.parametrize("device,want", [(T4, "float16"), (P100, "float16"), (A100, "bfloat16"),
                                         (TPU, "bfloat16"), (CPU, "float32")])
def test_auto_compute_dtype(device, want):
    assert devices.compute_dtype("auto", device).value == want
    assert devices.compute_dtype("float32", device) == ("float32", "as configured")


def test_auto_dtype_says_why():
    assert devices.compute_dtype("auto", T4).why == "auto: Tesla T4 has no bfloat16"


def test_trainer_uses_float16_with_loss_scaling_on_a_t4():
    config = ml_collections.ConfigDict(dict(dtype="auto", frozen_dtype="auto", loss_scale="auto"))
    assert devices.resolve_dtypes(config, T4) == ("float16", "float16", True)


def test_float8_frozen_weights_need_fp8_matrix_units():
    config = ml_collections.ConfigDict(dict(dtype="auto", frozen_dtype="float8", loss_scale="auto"))
    with pytest.raises(ValueError, match=r"frozen_dtype=float8 .*Tesla T4, compute capability 7.5"):
        devices.resolve_dtypes(config, T4)
    with pytest.raises(ValueError, match="A100"):  # 8.0: bf16 matrix units, no FP8 ones
        devices.resolve_dtypes(config, A100)
    assert devices.resolve_dtypes(config, _gpu("NVIDIA H200", "9.0"))[1] == "float8"
    assert devices.resolve_dtypes(config, CPU)[1] == "float8"  # XLA computes it, slowly
    config.frozen_dtype = "float9"
    with pytest.raises(ValueError, match="frozen_dtype must be auto or one of .*got 'float9'"):
        devices.resolve_dtypes(config, CPU)


def test_auto_attention(monkeypatch):
    monkeypatch.setattr(devices, "cudnn_attention_available", lambda kind: True)

    def auto(device, dtype, head_dim, softcap=0.0):
        return devices.attention_implementation("auto", device, dtype=dtype, head_dim=head_dim,
                                                softcap=softcap)

    # Gemma's power-of-two heads take the Pallas forward kernel on a bf16 GPU of 8.0+, soft-cap
    # (PaliGemma 2) or not (PaliGemma 1); SigLIP's 72-wide ones, which it does not tile, cuDNN's.
    for softcap in (0.0, 50.0):
        assert auto(A100, jnp.bfloat16, 256, softcap) == "pallas"
        assert auto(A100, "bfloat16", 128, softcap) == "pallas"
    assert auto(A100, jnp.bfloat16, 72) == "cudnn"
    assert auto(A100, "float16", 256) == "cudnn"  # the kernel is built for bfloat16
    # No cuDNN for a soft-cap, float32 or before compute capability 8.0: the einsums.
    assert auto(A100, "bfloat16", 72, softcap=50.0) == "einsum"
    for device, dtype in ((A100, "float16"), (A100, "float32"), (T4, "float16"),
                          (TPU, "bfloat16"), (CPU, "bfloat16")):
        assert auto(device, dtype, 256, softcap=50.0) == "einsum"
    assert auto(A100, jnp.float32, 256) == "einsum"
    for device in (T4, P100, TPU, CPU):
        for head_dim in (72, 256):
            assert auto(device, "bfloat16", head_dim) == "einsum"
    assert devices.attention_implementation("xla", T4, dtype="float32", head_dim=256) == "xla"
    monkeypatch.setattr(devices, "cudnn_attention_available", lambda kind: False)
    assert auto(A100, "bfloat16", 72) == "einsum"
    assert auto(A100, "bfloat16", 256) == "pallas"  # the kernel needs no cuDNN


def test_no_cudnn_attention_on_cpu():
    assert not devices.cudnn_attention_available("cpu")


def _dot_operand_dtypes(fn, *args):
    """The operand dtypes of every product ``fn`` makes, in order, inside custom VJPs too."""
    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "dot_general":
                yield tuple(str(v.aval.dtype) for v in e.invars)
            for param in e.params.values():
                inner = getattr(param, "jaxpr", param)  # a ClosedJaxpr or a Jaxpr
                if hasattr(inner, "eqns"):
                    yield from walk(inner)

    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def test_float32_products_take_float32_operands_on_cpu():
    # jaxlib 0.7's CPU backend fails on bfloat16 x bfloat16 -> float32 products (UNIMPLEMENTED
    # DotThunk): the attention logits and the output logits must reach XLA as float32 x float32.
    q = jnp.ones((1, 4, 2, 8), jnp.bfloat16)
    logits, encoded = _dot_operand_dtypes(lambda q: attention.attend(q, q, q, None), q)
    assert logits == ("float32", "float32")
    assert encoded == ("bfloat16", "bfloat16")  # the bfloat16 result stays a bfloat16 product
    embedder = gemma.Embedder(vocab_size=16, width=8)
    table = embedder.init(jax.random.PRNGKey(0), q[0, :, 0], method="decode")
    x = jnp.ones((2, 3, 8), jnp.bfloat16)
    assert _dot_operand_dtypes(lambda x: embedder.apply(table, x, method="decode"), x) == [
        ("float32", "float32")
    ]
    xla = jax.jit(lambda q: attention.attend(q, q, q, None, implementation="xla"))(q)
    assert xla.dtype == jnp.bfloat16


def test_auto_attention_is_einsum_on_cpu():
    q = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 8))
    mask = jnp.tril(jnp.ones((5, 5), bool))[None].repeat(2, 0)
    np.testing.assert_array_equal(attention.attend(q, q, q, mask, implementation="auto"),
                                  attention.attend(q, q, q, mask, implementation="einsum"))


SIGLIP = {"width": 1152, "num_heads": 16}  # 72-wide heads
PG1 = {"img": SIGLIP, "llm": {"head_dim": 256}}
PG2 = {"img": SIGLIP, "llm": {"head_dim": 256, "attn_logits_softcap": 50.0}}


def test_trainer_line_names_dtype_and_attention_with_why(monkeypatch):
    monkeypatch.setattr(devices, "cudnn_attention_available", lambda kind: True)
    assert devices.describe("auto", "auto", T4, PG1) == (
        "compute float16 (auto: Tesla T4 has no bfloat16), "
        "attention einsum (auto: no cuDNN attention on Tesla T4)")
    # The kernel tiles Gemma's 256-wide heads, not SigLIP's 72-wide ones: the towers differ.
    for model in (PG1, PG2):
        assert devices.describe("auto", "auto", A100, model) == (
            "compute bfloat16 (auto: A100), attention cudnn in the image tower (auto: A100), "
            "pallas in the LLM (auto: fused kernel for 256-wide heads on A100)")
    assert devices.describe("auto", "auto", T4, PG2) == (
        "compute float16 (auto: Tesla T4 has no bfloat16), attention einsum in the image tower "
        "(auto: no cuDNN attention on Tesla T4), einsum in the LLM (auto: a logit soft-cap "
        "(no cuDNN), float16 on Tesla T4)")
    assert devices.describe("auto", "auto", CPU, PG1) == (
        "compute float32 (auto: float32 on cpu), attention einsum (auto: float32 on cpu)")
    assert devices.describe("float32", "xla", CPU, PG2) == (
        "compute float32 (as configured), attention xla (as configured)")
    monkeypatch.setattr(devices, "cudnn_attention_available", lambda kind: False)
    assert devices.describe("auto", "auto", A100, PG1).endswith(
        "attention einsum in the image tower (auto: jax's cuDNN attention does not compile "
        "here), pallas in the LLM (auto: fused kernel for 256-wide heads on A100)")
