"""GPU kernel time from a JAX profiler trace, per kernel and per kind of kernel.

Used by the benchmark scripts to say where a step's time goes:

    times = kernel_times(lambda: jax.block_until_ready(step()))
    print(summarize(times, per=1, top=20))

Needs a GPU backend (the trace's device rows); on CPU the result is empty.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import tempfile
from collections.abc import Callable

# Substrings of kernel names (lower-cased) -> kind; the first match wins.
KINDS = (
    ("copy", ("memcpy", "memset")),
    ("attention", ("sdpa", "fmha", "flash")),
    ("matmul", ("gemm", "xmma", "nvjet", "cutlass", "matmul", "cublas")),
    ("convolution", ("convolution", "cudnn")),
    ("reduction fusion", ("reduce",)),
    ("elementwise fusion", ("fusion", "loop_", "input_", "wrapped_")),
)


@dataclasses.dataclass
class KernelTimes:
    """Total device microseconds and launch count per kernel name."""

    micros: collections.Counter
    count: collections.Counter
    # Kernel name -> the HLO op that launched it, when the trace records one (XLA's kernels).
    hlo_op: dict = dataclasses.field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return sum(self.micros.values()) / 1e3


def kind_of(name: str) -> str:
    """The kind of a GPU kernel, from its name (see KINDS); "other" when nothing matches."""
    low = name.lower()
    for kind, needles in KINDS:
        if any(n in low for n in needles):
            return kind
    return "other"


def kernel_times(run: Callable[[], object]) -> KernelTimes:
    """Traces one call of ``run`` (which must block until done) and sums GPU kernel time."""
    import jax

    logdir = tempfile.mkdtemp(prefix="pg_jax_trace_")
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
        run()
    paths = glob.glob(f"{logdir}/**/*perfetto_trace.json.gz", recursive=True)
    micros, count, hlo_op = collections.Counter(), collections.Counter(), {}
    if not paths:
        return KernelTimes(micros, count)
    with gzip.open(paths[0]) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    # Complete events ("X") on the GPU rows only; those rows' pids are named "/device:GPU:n".
    gpu_pids = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and "/device:GPU" in str(e.get("args", {}).get("name", ""))
    }
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in gpu_pids:
            micros[e["name"]] += e.get("dur", 0)
            count[e["name"]] += 1
            op = e.get("args", {}).get("hlo_op")
            if op:
                hlo_op.setdefault(e["name"], op)
    return KernelTimes(micros, count, hlo_op)


def summarize(times: KernelTimes, *, per: int = 1, top: int = 20) -> str:
    """A text table: time per kind, then the `top` kernels; times divided by `per` (calls)."""
    if not times.micros:
        return "no GPU kernels in the trace (not a GPU backend?)"
    by_kind = collections.Counter()
    for name, us in times.micros.items():
        by_kind[kind_of(name)] += us
    total = sum(by_kind.values())
    lines = [f"GPU kernel time {total / 1e3 / per:.2f} ms per call, by kind:"]
    for kind, us in by_kind.most_common():
        lines.append(f"  {kind:20s} {us / 1e3 / per:9.2f} ms  {us / total:6.1%}")
    lines.append(f"top {top} kernels (ms per call, launches per call, kind, name):")
    for name, us in times.micros.most_common(top):
        lines.append(
            f"  {us / 1e3 / per:9.3f} {times.count[name] / per:7.1f}x  {kind_of(name):18s} "
            f"{name[:80]}" + (f"  [{times.hlo_op[name][:60]}]" if name in times.hlo_op else "")
        )
    return "\n".join(lines)
