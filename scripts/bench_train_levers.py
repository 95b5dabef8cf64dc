"""What each lever buys: one pg_jax train-step configuration per row, against the default.

Each row runs ``scripts/bench_train_step.py`` in its own process (same shapes, same random
batch), changing one thing from the default, and the table reports examples/s, MFU, peak memory
and compile time next to the default's.

  python scripts/bench_train_levers.py --variant pg1_3b --res 224 --batch 32 --out levers.json
  python scripts/bench_train_levers.py --variant tiny_pg1 --res 224 --batch 2 --steps 2 \\
      --only default frozen_f32       # CPU smoke test

PaliGemma 2 variants skip the fused-attention rows (no logit soft-cap in those kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (what changes, extra bench_train_step.py arguments, extra environment)
LEVERS = {
    "default": ("the trainer's default (LLM unrolled, frozen bf16, logits at the 8 answer "
                "positions, donated state)", [], {}),
    "einsum_attention": ("attention as plain einsums", ["--attention_impl", "einsum"], {}),
    "xla_attention": ("jax.nn.dot_product_attention without cuDNN",
                      ["--attention_impl", "xla"], {}),
    "rolled_scan": ("LLM layers in a rolled scan", ["--llm_unroll", "1"], {}),
    "remat_nothing": ("remat nothing_saveable (rolled scan)",
                      ["--remat", "nothing_saveable"], {}),
    "remat_dots": ("remat dots_with_no_batch_dims_saveable (rolled scan)",
                   ["--remat", "dots_with_no_batch_dims_saveable"], {}),
    "frozen_f32": ("frozen weights stored float32", ["--frozen_dtype", "float32"], {}),
    "all_logits": ("logits at all 32 text positions (same loss)", ["--logits_len", "32"], {}),
    "no_donation": ("train state not donated", ["--no_donate"], {}),
    "triton_gemm": ("XLA's Triton GEMMs on (step.compiler_options turns them off)", [],
                    {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"}),
}
FUSED_ATTENTION = ("einsum_attention", "xla_attention")


def run(variant: str, res: int, batch: int, steps: int, attention: str, args: list[str],
        env: dict) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_train_step.py"), "--variant",
           variant, "--res", str(res), "--batch", str(batch), "--steps", str(steps),
           "--attention_impl", attention, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                         env={**os.environ, **env})
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        err = out.stderr or out.stdout
        return {"error": "out of memory" if "RESOURCE_EXHAUSTED" in err else err[-300:]}
    def num(pattern: str) -> float:
        m = re.search(pattern, line)
        return float(m.group(1)) if m else float("nan")  # e.g. no MFU on a CPU

    compile_s = re.search(r"compile ([\d.]+)s", out.stdout)
    return {"examples_per_s": num(r"([\d.]+) examples/s"), "mfu": num(r"MFU ([\d.]+)%"),
            "peak_gib": num(r"peak ([\d.]+) GiB"),
            "compile_s": float(compile_s.group(1)) if compile_s else None, "result": line}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="pg1_3b")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--only", nargs="+", choices=sorted(LEVERS), help="rows to run")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args()

    is_pg2 = "pg2" in a.variant
    # PaliGemma 2's soft-cap needs einsum attention; PaliGemma 1 defaults to cuDNN (GPU).
    attention = "einsum" if is_pg2 else ("cudnn" if _has_gpu() else "einsum")
    names = [n for n in (a.only or LEVERS) if not (is_pg2 and n in FUSED_ATTENTION)]
    if "default" not in names:
        names.insert(0, "default")
    rows = {}
    for name in names:
        what, args, env = LEVERS[name]
        if name == "einsum_attention" and attention == "einsum":
            continue  # that is the default here
        rows[name] = {"what": what, **run(a.variant, a.res, a.batch, a.steps, attention, args,
                                          env)}
        print(json.dumps({name: rows[name]}), flush=True)

    base = rows["default"].get("examples_per_s")
    print(f"\n{a.variant} {a.res} px batch {a.batch}, attention {attention} unless a row says")
    print("| lever | examples/s | vs default | MFU | peak GiB | compile s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {r['what']} | {r['error'][:60]} | | | | |")
            continue
        rel = f"{r['examples_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['what']} | {r['examples_per_s']:.1f} | {rel} | {r['mfu']:.1f}% | "
              f"{r['peak_gib']:.1f} | {r['compile_s']} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


def _has_gpu() -> bool:
    """Whether JAX sees a GPU, asked in a subprocess so this process never initialises JAX."""
    code = "import jax; print(jax.default_backend())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip().endswith("gpu")


if __name__ == "__main__":
    main()
