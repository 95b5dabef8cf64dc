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
    assert devices.attention_implementation("auto", A100, dtype=jnp.bfloat16) == "cudnn"
    assert devices.attention_implementation("auto", A100, dtype="float16") == "cudnn"
    # cuDNN's kernel: no soft-cap (PaliGemma 2), no float32, not before compute capability 8.0.
    # A soft-cap takes the Pallas forward kernel on a bf16 GPU of 8.0+, else the einsums.
    assert devices.attention_implementation("auto", A100, dtype="bfloat16", softcap=50.0) == (
        "pallas"
    )
    for device, dtype in ((A100, "float16"), (A100, "float32"), (T4, "float16"),
                          (TPU, "bfloat16"), (CPU, "bfloat16")):
        assert devices.attention_implementation("auto", device, dtype=dtype,
                                                softcap=50.0) == "einsum"
    assert devices.attention_implementation("auto", A100, dtype=jnp.float32) == "einsum"
    for device in (T4, P100, TPU, CPU):
        assert devices.attention_implementation("auto", device, dtype="bfloat16") == "einsum"
    assert devices.attention_implementation("xla", T4, dtype="float32") == "xla"
    monkeypatch.setattr(devices, "cudnn_attention_available", lambda kind: False)
    assert devices.attention_implementation("auto", A100, dtype="bfloat16") == "einsum"


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


PG1 = {"img": {}, "llm": {}}
PG2 = {"img": {}, "llm": {"attn_logits_softcap": 50.0}}


def test_trainer_line_names_dtype_and_attention_with_why(monkeypatch):
    monkeypatch.setattr(devices, "cudnn_attention_available", lambda kind: True)
    assert devices.describe("auto", "auto", T4, PG1) == (
        "compute float16 (auto: Tesla T4 has no bfloat16), "
        "attention einsum (auto: no cuDNN attention on Tesla T4)")
    assert devices.describe("auto", "auto", A100, PG1) == (
        "compute bfloat16 (auto: A100), attention cudnn (auto: A100)")
    # PaliGemma 2's LLM soft-caps its logits, which cuDNN's kernel cannot: the towers differ.
    assert devices.describe("auto", "auto", A100, PG2) == (
        "compute bfloat16 (auto: A100), attention cudnn in the image tower (auto: A100), "
        "pallas in the LLM (auto: soft-cap kernel on A100)")
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
        "attention einsum (auto: jax's cuDNN attention does not compile here)")
