"""Measures input-pipeline throughput (examples/s) at several resolutions on this machine.

For each resolution: from the prepared cache (PNG and raw uint8 images) and from raw page PNGs
(the original-release JSON layout, decoded and resized inside tf.data). The input is the hard
synthetic set (850x1100 grayscale pages, like DocVQA scans) unless --input points to a DocVQA
JSON release. Writes a markdown table to --md.

  python scripts/bench_data.py [--res 224 448 896] [--examples 512] [--md bench_data.md]
"""

import argparse
import os
import platform
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from configs import docvqa  # noqa: E402
from pg_jax.data import cache_writer  # noqa: E402
from pg_jax.data import core, input_pipeline, synthetic  # noqa: E402


def throughput(source, res: int, batch_size: int, examples: int) -> float:
    """Examples/s of the full training pipeline (decode, resize, value_range, tokenize)."""
    it = input_pipeline.make_iterator(
        source,
        docvqa.get_config(f"res={res},text_len=32").input.pp,  # the trainer's pp
        batch_size=batch_size,
        process_index=0,
        process_count=1,
        shuffle_buffer=256,
    )
    for _ in range(3):  # Warm-up: fills the shuffle buffer and traces the graph.
        next(it)
    t0 = time.perf_counter()
    n = 0
    while n < examples:
        next(it)
        n += batch_size
    return n / (time.perf_counter() - t0)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--res", type=int, nargs="+", default=[224, 448, 896])
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--input", default=None, help="DocVQA JSON release (default: synthetic hard)")
    p.add_argument("--work", default="/tmp/pg_jax_bench")
    p.add_argument("--md", default=None)
    a = p.parse_args()
    src_dir = a.input or os.path.join(
        synthetic.ensure_synthetic(a.work, num_pages=200, difficulty="hard"), "docvqa"
    )
    rows = []
    for res in a.res:
        raw_src = core.get("docvqa_json", path=src_dir, split="train", limit=a.examples)
        row = {"res": res, "raw PNG pages": throughput(raw_src, res, a.batch_size, a.examples // 2)}
        for fmt in ("png", "raw"):
            out = os.path.join(a.work, f"cache_{res}_{fmt}")
            shutil.rmtree(out, ignore_errors=True)  # Time a fresh build, not a cache reuse.
            t0 = time.perf_counter()
            m = cache_writer.prepare(
                "docvqa-json",
                src_dir,
                "train",
                out,
                limit=a.examples,
                res=res,
                image_format=fmt,
                overwrite=True,
                verbose=False,
            )
            row[f"prepare {fmt} (s)"] = time.perf_counter() - t0
            size = sum(os.path.getsize(os.path.join(out, s["file"])) for s in m["shards"])
            row[f"cache {fmt} KB/ex"] = size / 1024 / m["counts"]["kept"]
            src = core.get("docvqa_prepared", path=out)
            row[f"cache {fmt}"] = throughput(src, res, a.batch_size, a.examples)
        rows.append(row)
        print({k: round(v, 1) for k, v in row.items()}, flush=True)
    cols = list(rows[0])
    lines = [
        f"# Data pipeline benchmark ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {os.cpu_count()}-core CPU ({_cpu_name()}), "
        f"no GPU; Python {platform.python_version()}.",
        f"Command: `python scripts/{os.path.basename(__file__)} --res {' '.join(map(str, a.res))} "
        f"--examples {a.examples}`",
        "Input: "
        + (a.input or "synthetic hard set (850x1100 grayscale PNG pages)")
        + f"; batch {a.batch_size}; full training pp (decode, resize, value_range, tokenize,"
        " masks).",
        "Throughput in examples/s (higher is better).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += [
        "| " + " | ".join(f"{r[c]:.1f}" if c != "res" else str(r[c]) for c in cols) + " |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
