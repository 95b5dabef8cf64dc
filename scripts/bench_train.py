"""Attention-only training step: pg_jax next to transformers + torch, in one run on one GPU.

Each configuration runs twice, one after the other, each side in its own subprocess so the
two frameworks never share the GPU's memory: pg_jax through ``scripts/bench_train_step.py``
and transformers through ``--side hf`` of this script. Both use PaliGemma 3B shapes with
random weights, bf16 compute, the LLM's attention weights trainable (f32 master copy in
pg_jax; the HF side trains them in bf16 as the common recipe does), Adam(W), 32 text tokens
with the loss on the last 8, and ``token_type_ids`` on the HF side.

  python scripts/bench_train.py --variant pg1_3b --configs 224x8 224x32 448x8 --out train.json
  python scripts/bench_train.py --variant tiny_pg1 --configs 224x2 --steps 2   # CPU smoke test

Reports examples/s, peak device memory and the first step's time (compile for pg_jax, the
first eager step for HF) for each side, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_LEN, LOSS_LEN = 32, 8


def run_hf(variant: str, res: int, batch: int, steps: int, gradient_checkpointing: bool) -> dict:
    """The transformers side: PaliGemmaForConditionalGeneration, SDPA (eager for Gemma 2)."""
    sys.path.insert(0, ROOT)
    import numpy as np
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    from pg_jax.models import hf_config, variants

    from transformers import PaliGemmaConfig

    cfg = variants.get_config(variant, res=res).to_dict()
    config = hf_config.to_hf_config(cfg)

    is_pg2 = bool(cfg["llm"].get("post_norms"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hf_cfg = PaliGemmaConfig(**{k: v for k, v in config.items() if k != "architectures"})
    attn = "eager" if is_pg2 else "sdpa"  # transformers forces eager for Gemma 2's soft-cap
    torch.manual_seed(0)
    with torch.device(device):
        model = PaliGemmaForConditionalGeneration._from_config(hf_cfg, attn_implementation=attn,
                                                               dtype=dtype)
    model.train()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    trainable = []
    for name, p in model.named_parameters():
        train = "language_model" in name and ".self_attn." in name
        p.requires_grad_(train)
        if train:
            trainable.append(p)
    opt = torch.optim.AdamW(trainable, lr=1e-5)

    n_img = (res // cfg["img"]["patch_size"]) ** 2
    rng = np.random.default_rng(0)
    vocab = cfg["llm"]["vocab_size"]
    text = rng.integers(3, vocab, (batch, TEXT_LEN))
    ids = np.concatenate([np.full((batch, n_img), vocab), text], 1)
    types = np.zeros_like(ids)
    types[:, -LOSS_LEN:] = 1
    labels = np.full_like(ids, -100)
    labels[:, -LOSS_LEN:] = ids[:, -LOSS_LEN:]
    inputs = {
        "input_ids": torch.tensor(ids, device=device),
        "token_type_ids": torch.tensor(types, device=device),
        "attention_mask": torch.ones(ids.shape, dtype=torch.long, device=device),
        "labels": torch.tensor(labels, device=device),
        "pixel_values": torch.tensor(rng.uniform(-1, 1, (batch, 3, res, res)), dtype=dtype,
                                     device=device),
    }

    def step():
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t = time.time()
    step()
    sync()
    first = time.time() - t
    step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    for _ in range(steps):
        loss = step()
    sync()
    dt = (time.time() - t) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"examples_per_s": batch / dt, "step_ms": dt * 1e3, "peak_gib": peak,
            "first_step_s": first, "loss": float(loss), "attention": attn,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


def run_pg_jax(variant: str, res: int, batch: int, steps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_train_step.py"), "--variant",
           variant, "--res", str(res), "--batch", str(batch), "--steps", str(steps), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return {"error": (out.stderr or out.stdout)[-400:]}
    compile_s = re.search(r"compile ([\d.]+)s", out.stdout)
    get = lambda pat: float(re.search(pat, line).group(1))  # noqa: E731
    return {"examples_per_s": get(r"([\d.]+) examples/s"), "step_ms": get(r"step ([\d.]+) ms"),
            "peak_gib": get(r"peak ([\d.]+) GiB"), "mfu": line.split("MFU ")[1].split(",")[0],
            "first_step_s": float(compile_s.group(1)) if compile_s else float("nan")}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="pg1_3b")
    p.add_argument("--configs", nargs="+", default=["224x8", "224x32", "448x8"],
                   help="RESxBATCH, e.g. 448x8")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pg_jax_args", default="--attention_impl cudnn",
                   help="extra bench_train_step.py arguments (e.g. '--remat nothing_saveable')")
    p.add_argument("--hf_gradient_checkpointing", action="store_true")
    p.add_argument("--side", choices=["both", "hf"], default="both", help=argparse.SUPPRESS)
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args()

    if a.side == "hf":  # child process
        res, batch = map(int, a.configs[0].split("x"))
        print("HF_RESULT " + json.dumps(run_hf(a.variant, res, batch, a.steps,
                                                 a.hf_gradient_checkpointing)))
        return

    rows = []
    for conf in a.configs:
        res, batch = map(int, conf.split("x"))
        ours = run_pg_jax(a.variant, res, batch, a.steps, a.pg_jax_args.split())
        cmd = [sys.executable, __file__, "--side", "hf", "--variant", a.variant, "--configs",
               conf, "--steps", str(a.steps)]
        if a.hf_gradient_checkpointing:
            cmd.append("--hf_gradient_checkpointing")
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in out.stdout.splitlines() if x.startswith("HF_RESULT ")), None)
        theirs = json.loads(line[len("HF_RESULT "):]) if line else {
            "error": "out of memory" if "out of memory" in out.stderr.lower()
            else out.stderr[-400:]}
        row = {"res": res, "batch": batch, "pg_jax": ours, "hf": theirs}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{a.variant}; pg_jax args: {a.pg_jax_args}; HF gradient checkpointing: "
          f"{a.hf_gradient_checkpointing}")
    print("| res | batch | pg_jax ex/s | HF ex/s | ratio | pg_jax MFU | pg_jax peak GiB "
          "| HF peak GiB | pg_jax compile s | HF first step s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, t = r["pg_jax"], r["hf"]
        ratio = (f"{o['examples_per_s'] / t['examples_per_s']:.2f}x"
                 if "examples_per_s" in o and "examples_per_s" in t else "-")
        fmt = lambda d, k, f="{:.1f}": f.format(d[k]) if k in d else d.get("error", "-")[:40]  # noqa: E731
        print(f"| {r['res']} | {r['batch']} | {fmt(o, 'examples_per_s')} | "
              f"{fmt(t, 'examples_per_s')} | {ratio} | {o.get('mfu', '-')} | "
              f"{fmt(o, 'peak_gib')} | {fmt(t, 'peak_gib')} | {fmt(o, 'first_step_s')} | "
              f"{fmt(t, 'first_step_s')} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
