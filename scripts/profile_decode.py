"""Where does a decode step's time go? GPU kernel time per kernel name, from a JAX trace.

Runs ``pg_jax.decode`` on random weights, traces one call with ``jax.profiler``
(Perfetto JSON), and prints the kernels that took the most device time, so the
per-token cost can be compared with the weight-bandwidth bound.

  python scripts/profile_decode.py --variant pg1_3b --res 224 --batch 1 --decode_len 17
"""

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from pg_jax.decode import decode  # noqa: E402
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
    batch = {"image": image, "text": text}
    run = lambda: decode(model, params, batch, max_decode_len=a.decode_len, eos_id=-1)  # noqa: E731
    for _ in range(3):
        jax.block_until_ready(run())

    logdir = tempfile.mkdtemp()
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
        jax.block_until_ready(run())
    path = glob.glob(f"{logdir}/**/*perfetto_trace.json.gz", recursive=True)[0]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    # Device (GPU stream) events carry their pid's name; keep complete events
    # on the GPU rows only.
    gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                and "/device:GPU" in str(e.get("args", {}).get("name", ""))}
    if not gpu_pids:
        names = {str(e.get("args", {}).get("name")) for e in events if e.get("ph") == "M"}
        print("no GPU rows in the trace; rows:", sorted(names)[:20])
    per_name, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in gpu_pids:
            per_name[e["name"]] += e.get("dur", 0)
            count[e["name"]] += 1
    total = sum(per_name.values())
    print(f"{a.variant} res {a.res} batch {a.batch}, {a.decode_len} tokens: "
          f"GPU kernel time {total / 1e3:.2f} ms in {sum(count.values())} kernels")
    for name, dur in per_name.most_common(a.top):
        print(f"{dur / 1e3:9.3f} ms {count[name]:6d}x  {name[:110]}")


if __name__ == "__main__":
    main()
