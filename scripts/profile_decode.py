"""Where does a decode call's time go? GPU kernel time per kind and per kernel, from a JAX trace.

Runs ``pg_jax.decode`` on random weights, traces one call with ``jax.profiler``
(`pg_jax.profiling`), and prints the time per kind of kernel and the kernels that took
the most device time, so the per-token cost can be compared with the weight-bandwidth bound.

  python scripts/profile_decode.py --variant pg1_3b --res 224 --batch 1 --decode_len 17
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from pg_jax import profiling  # noqa: E402
from pg_jax.decode import decode, decoding_params  # noqa: E402
from pg_jax.models import paligemma, variants  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="pg1_3b")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--decode_len", type=int, default=17)
    p.add_argument("--attention_impl", default="einsum")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()

    cfg = variants.get_config(a.variant, res=a.res, dtype="bfloat16",
                              attention_impl=a.attention_impl).to_dict()
    model = paligemma.Model(**cfg)
    text = jnp.ones((a.batch, 16), jnp.int32)
    image = jnp.zeros((a.batch, a.res, a.res, 3), jnp.bfloat16)
    init = jax.jit(lambda k: jax.tree.map(lambda x: (x * 0.02).astype(jnp.bfloat16),
                                          model.init(k, image[:1], text[:1], text[:1] * 0)))
    params = init(jax.random.PRNGKey(0))["params"]
    params = decoding_params(model, params)  # once, as evaluators do
    batch = {"image": image, "text": text}
    run = lambda: decode(model, params, batch, max_decode_len=a.decode_len, eos_id=-1)  # noqa: E731
    for _ in range(3):
        jax.block_until_ready(run())
    t0 = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(run())
    wall_ms = (time.perf_counter() - t0) / 5 * 1e3

    times = profiling.kernel_times(lambda: jax.block_until_ready(run()))
    print(f"{a.variant} res {a.res} batch {a.batch}, {a.decode_len} tokens: "
          f"{wall_ms:.2f} ms wall per call (GPU idle = wall - kernel time)")
    print(profiling.summarize(times, per=1, top=a.top))

if __name__ == "__main__":
    main()
