"""The tanh-approximated GELU and its derivative, shared by the GeGLU's backward pass in XLA
(`gemma.gelu_gated`) and in the FP8 Pallas kernels (`fp8_geglu_kernel`), so that both compute
the same values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def tanh_gelu_and_derivative(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(gelu_tanh(x), d gelu_tanh / dx)`` for a float32 ``x``.

    gelu_tanh(x) = x (1 + tanh(z)) / 2 = x sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3): the
    sigmoid form keeps its precision where tanh(z) is near -1. It is written out as
    ``1 / (1 + exp(-2z))``, the form the Pallas kernels were built and tested with.
    """
    s = 1.0 / (1.0 + jnp.exp(-2 * _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    return x * s, s + x * 2 * s * (1 - s) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
