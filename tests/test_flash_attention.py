"""The soft-cap attention forward kernel (Pallas's interpreter on the CPU), with the einsum
backward pass, against the einsum attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pg_jax.models import attention, flash_attention


@pytest.mark.parametrize("softcap,length", [(0.0, 40), (2.0, 40), (2.0, 64)])
def test_kernel_equals_einsum_attention_forward_and_gradients(softcap, length):
    b, n, kv, h = 2, 4, 2, 32
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(ks[0], (b, length, n, h)) * 0.5
    k = jax.random.normal(ks[1], (b, length, kv, h))
    v = jax.random.normal(ks[2], (b, length, kv, h))
    i, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    prefix, valid = jnp.array([20, 25]), jnp.array([30, length])
    mask = ((j <= i) | (j < prefix[:, None, None])) & (j < valid[:, None, None])
    mask = mask.at[0, 5].set(False)  # a fully masked query row: uniform in both
    # Blocks of 16: 40 queries and keys are padded to 48, 64 are not.
    config = flash_attention.Config(block_q=16, block_k=16, num_warps=4, num_stages=2)

    def einsum(q, k, v):
        return attention.attend(q, k, v, mask, softcap=softcap, implementation="einsum")

    def kernel(q, k, v):
        return flash_attention.attend(q, k, v, mask, softcap=softcap, config=config,
                                      interpret=True)

    np.testing.assert_allclose(kernel(q, k, v), einsum(q, k, v), atol=1e-5)
    w = jax.random.normal(ks[3], q.shape)
    want, got = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * w), argnums=(0, 1, 2))(q, k, v)
                 for f in (einsum, kernel)]
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, atol=5e-5)


def test_attend_routes_pallas_to_the_kernel_and_one_token_steps_to_the_einsums(monkeypatch):
    """``implementation="pallas"`` (what auto picks for PaliGemma 2 on one GPU) is the kernel
    for a prefill or a train step and the einsums for a one-token decode step."""
    calls = []
    kernel_attend = flash_attention.attend
    monkeypatch.setattr(flash_attention, "attend",
                        lambda *a, **kw: calls.append(1) or kernel_attend(*a, **kw))
    ks = jax.random.split(jax.random.PRNGKey(1), 3)
    k, v = (jax.random.normal(x, (1, 24, 1, 16)) for x in ks[1:])
    for t, kernel in ((8, True), (1, False)):
        q = jax.random.normal(ks[0], (1, t, 2, 16))
        mask = jnp.ones((1, t, 24), bool)
        fn = lambda q: attention.attend(q, k, v, mask, softcap=5.0, implementation="pallas")  # noqa: E731
        calls.clear()
        out = fn(q)
        assert bool(calls) == kernel
        np.testing.assert_allclose(
            out, attention.attend(q, k, v, mask, softcap=5.0, implementation="einsum"),
            atol=1e-5)
