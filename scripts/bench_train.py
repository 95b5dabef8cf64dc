"""Training step: pg_jax next to its strongest peers, in one run on one GPU.

Every side runs in its own subprocess, one after the other, so no two frameworks share the GPU's
memory. All sides use the same PaliGemma shapes (``--variant``) with random weights (no
checkpoint, no tokenizer), bf16 compute, Adam(W), 32 text tokens with the loss on the last 8.

Sides (``--sides``; by default every side of the ``--mode``):

  --mode attn   the LLM's attention weights trainable (~170M of PaliGemma 1 3B)
    pg_jax      ``scripts/bench_train_step.py --freeze attn`` (f32 master copy of the
                trainable weights, frozen weights bf16)
    hf          transformers ``PaliGemmaForConditionalGeneration``, eager PyTorch, SDPA
                (eager attention for PaliGemma 2, as transformers requires for the soft-cap),
                the trainable weights in bf16 as the common recipe does
    hf_compile  the same model under ``torch.compile``
    keras_hub   KerasHub ``PaliGemmaCausalLM`` on the JAX backend, built from a config in bf16,
                the same attention weights trainable, ``compile()`` + ``train_on_batch``
                (``scripts/bench_keras_hub.py``)

  --mode lora   LoRA factors trainable, everything else frozen
    pg_jax      ``bench_train_step.py --freeze lora`` with the same rank and targets as hf_peft
                (needs pg_jax's LoRA trainable set; refused with a message until it exists)
    hf_peft     transformers + PEFT, LoRA r=8 (alpha 8) on q/k/v/o/gate/up/down of the LLM,
                the common recipe (``--peft_targets all`` also matches the image tower's q/k/v,
                as a plain ``target_modules`` list of those names does)
    keras_hub   ``backbone.enable_lora(rank=4)``, as KerasHub's fine-tuning tutorial does
                (its default targets: query and value of every attention layer, the image
                tower's included)

A side whose packages are not importable (by ``--keras_python`` for keras_hub, by this
interpreter otherwise) is skipped with one line. Each side reports examples/s over
``--steps`` timed steps after two warm-up steps, and the measured peak device memory after the
timed steps, the same way for every side: the process's peak since it started
(``device.memory_stats()["peak_bytes_in_use"]`` on JAX, ``torch.cuda.max_memory_allocated()``
on PyTorch, never reset). One table per configuration, with the ratio of pg_jax to the best peer
(speed: pg_jax's examples/s over the fastest peer's; memory: the lowest peer peak over pg_jax's).

  python scripts/bench_train.py --variant pg1_3b --configs 224x32 448x8 --out train.json
  python scripts/bench_train.py --variant pg1_3b --configs 224x32 448x8 --mode lora --out lora.json
  python scripts/bench_train.py --variant tiny_pg1 --configs 224x2 --steps 2   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_LEN, LOSS_LEN = 32, 8
SIDES = {"attn": ("pg_jax", "hf", "hf_compile", "keras_hub"),
         "lora": ("pg_jax", "hf_peft", "keras_hub")}  # fmt: skip
REQUIRES = {
    "pg_jax": ("jax", "flax", "optax", "ml_collections"),
    "hf": ("torch", "transformers"),
    "hf_compile": ("torch", "transformers"),
    "hf_peft": ("torch", "transformers", "peft"),
    "keras_hub": ("jax", "keras", "keras_hub"),
}
# The LLM's projections in the common HF + PEFT recipe, and pg_jax's names for the same weights.
PEFT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PG_JAX_LORA_TARGETS = "attn_mlp"  # pg_jax.models.lora.TARGETS: the same seven projections
RESULT = "SIDE_RESULT "


# ---------------------------------------------------------------------------------------------
# Inputs shared by the peers: [image tokens] + 32 text tokens, loss on the last 8.
# ---------------------------------------------------------------------------------------------
def random_text(batch: int, vocab: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng, rng.integers(3, vocab, (batch, TEXT_LEN))


def trainable_count(params) -> int:
    return int(sum(p.numel() for p in params))


# ---------------------------------------------------------------------------------------------
# transformers sides: hf, hf_compile, hf_peft.
# ---------------------------------------------------------------------------------------------
def run_hf(cfg: dict, side: str, batch: int, steps: int, gradient_checkpointing: bool,
           peft_rank: int, peft_alpha: int, peft_targets: str) -> dict:
    """PaliGemmaForConditionalGeneration built from pg_jax's config, random bf16 weights."""
    sys.path.insert(0, ROOT)
    import numpy as np
    import torch
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    from pg_jax.models import hf_config

    config = hf_config.to_hf_config(cfg)
    res = cfg["img"]["image_size"]
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
        if side == "hf_peft":  # re-entrant checkpoints need an input that requires grad
            model.enable_input_require_grads()
    note = attn
    if side == "hf_peft":
        from peft import LoraConfig, get_peft_model

        names = "|".join(PEFT_MODULES)
        # A regex limits the adapters to the LLM; the plain list of names also matches the
        # image tower's q/k/v_proj.
        targets = (list(PEFT_MODULES) if peft_targets == "all"
                   else rf".*language_model.*\.({names})")  # fmt: skip
        model = get_peft_model(model, LoraConfig(r=peft_rank, lora_alpha=peft_alpha,
                                                 lora_dropout=0.0, target_modules=targets))
        trainable = [p for p in model.parameters() if p.requires_grad]
        note += f", PEFT LoRA r={peft_rank} alpha={peft_alpha} on {peft_targets}"
    else:
        trainable = []
        for name, p in model.named_parameters():
            train = "language_model" in name and ".self_attn." in name
            p.requires_grad_(train)
            if train:
                trainable.append(p)
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    forward = model
    if side == "hf_compile":
        forward = torch.compile(model)
        note += ", torch.compile"

    n_img = (res // cfg["img"]["patch_size"]) ** 2
    vocab = cfg["llm"]["vocab_size"]
    rng, text = random_text(batch, vocab)
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
        loss = forward(**inputs).loss
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
    t = time.time()
    for _ in range(steps):
        loss = step()
    sync()
    dt = (time.time() - t) / steps
    # The process's peak since start (not reset after warm-up), as JAX's peak_bytes_in_use.
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"examples_per_s": batch / dt, "step_ms": dt * 1e3, "peak_gib": peak,
            "first_step_s": first, "loss": float(loss), "trainable_params":
            trainable_count(trainable), "note": note,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "versions": f"torch {torch.__version__}"}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# pg_jax side: scripts/bench_train_step.py in its own process.
# ---------------------------------------------------------------------------------------------
def run_pg_jax(a, res: int, batch: int) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_train_step.py"), "--variant",
           a.variant, "--res", str(res), "--batch", str(batch), "--steps", str(a.steps),
           *a.pg_jax_args.split()]  # fmt: skip
    if a.mode == "lora":  # the same rank, alpha and targets as the hf_peft side
        cmd += ["--freeze", "lora", "--lora_rank", str(a.peft_rank), "--lora_alpha",
                str(a.peft_alpha), "--lora_targets", PG_JAX_LORA_TARGETS]  # fmt: skip
    out = _run(cmd, a.side_timeout)
    if isinstance(out, dict):
        return out
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return {"error": _error_of(out)}
    compile_s = re.search(r"compile ([\d.]+)s", out.stdout)
    def get(pattern):
        return float(re.search(pattern, line).group(1))

    return {"examples_per_s": get(r"([\d.]+) examples/s"), "step_ms": get(r"step ([\d.]+) ms"),
            # 0.0: the device has no memory stats (CPU)
            "peak_gib": get(r"peak ([\d.]+) GiB") or float("nan"),
            "mfu": line.split("MFU ")[1].split(",")[0],
            "trainable_params": int(get(r"trainable=(\d+)")),
            "first_step_s": float(compile_s.group(1)) if compile_s else float("nan"),
            "device": re.search(r"devices=\d+x([^:]+):", line).group(1),
            "note": " ".join(cmd[2:])}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The parent: one subprocess per side and configuration, then the tables.
# ---------------------------------------------------------------------------------------------
def _error_of(out: subprocess.CompletedProcess) -> str:
    text = out.stderr + out.stdout
    if "out of memory" in text.lower() or "RESOURCE_EXHAUSTED" in text:
        return "out of memory"
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][-300:] if lines else f"exit status {out.returncode}"


def _has_gpu() -> bool:
    """Whether JAX sees a GPU, asked in a subprocess so this process never initialises JAX."""
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                         check=False, capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip().endswith("gpu")


def _python_of(a, side: str) -> str:
    return a.keras_python if side == "keras_hub" else sys.executable


def missing_packages(python: str, side: str) -> list[str]:
    """The packages of ``side`` that ``python`` cannot import (found without importing)."""
    probe = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
             "if importlib.util.find_spec(m) is None))")  # fmt: skip
    out = subprocess.run([python, "-c", probe, *REQUIRES[side]], check=False,
                         capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        return [f"(cannot run {python})"]
    return out.stdout.split()


def run_side(a, side: str, cfg: dict, res: int, batch: int) -> dict:
    if side == "pg_jax":
        return run_pg_jax(a, res, batch)
    if side == "keras_hub":
        cmd = [a.keras_python, os.path.join(ROOT, "scripts", "bench_keras_hub.py"), "train",
               "--model_json", json.dumps(cfg), "--batch", str(batch), "--steps", str(a.steps),
               "--mode", a.mode, "--lora_rank", str(a.keras_lora_rank)]  # fmt: skip
        return _child_result(cmd, a.side_timeout)
    cmd = [_python_of(a, side), os.path.abspath(__file__), "--side", side, "--mode", a.mode,
           "--steps", str(a.steps), "--configs", f"{res}x{batch}", "--model_json",
           json.dumps(cfg), "--peft_rank", str(a.peft_rank), "--peft_alpha", str(a.peft_alpha),
           "--peft_targets", a.peft_targets, "--keras_lora_rank", str(a.keras_lora_rank)]
    if a.hf_gradient_checkpointing:
        cmd.append("--hf_gradient_checkpointing")
    return _child_result(cmd, a.side_timeout)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess | dict:
    """The side's process, or {"error": ...} when it ran past ``timeout`` seconds (0: none)."""
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT,
                              timeout=timeout or None)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (--side_timeout)"}


def _child_result(cmd: list[str], timeout: float) -> dict:
    out = _run(cmd, timeout)
    if isinstance(out, dict):
        return out
    line = next((x for x in out.stdout.splitlines() if x.startswith(RESULT)), None)
    return json.loads(line[len(RESULT):]) if line else {"error": _error_of(out)}


def compare(row: dict) -> None:
    """Adds the best peer and pg_jax's ratios to it (speed, and memory: lower is better)."""
    peers = {k: v for k, v in row["sides"].items() if k != "pg_jax" and "examples_per_s" in v}
    ours = row["sides"].get("pg_jax", {})
    if not peers or "examples_per_s" not in ours:
        return
    best = max(peers, key=lambda k: peers[k]["examples_per_s"])
    row["best_peer"] = best
    row["speed_ratio"] = ours["examples_per_s"] / peers[best]["examples_per_s"]
    measured = {k: v["peak_gib"] for k, v in peers.items() if v["peak_gib"] > 0}  # NaN on CPU
    if measured and ours["peak_gib"] > 0:
        lowest = min(measured, key=measured.get)
        row["lowest_memory_peer"] = lowest
        row["memory_ratio"] = measured[lowest] / ours["peak_gib"]


def table(row: dict, title: str) -> str:
    head = "| side | examples/s | step ms | peak GiB | trainable params | first step s | setting |"
    lines = [f"{title}: {row['res']} px, batch {row['batch']}, mode {row['mode']}", head,
             "|---|---|---|---|---|---|---|"]
    for side, r in row["sides"].items():
        if "examples_per_s" not in r:
            lines.append(f"| {side} | {r.get('error', '-')} | | | | | |")
            continue
        mfu = f" (MFU {r['mfu']})" if "mfu" in r else ""
        lines.append(f"| {side} | {r['examples_per_s']:.1f}{mfu} | {r['step_ms']:.1f} | "
                     f"{r['peak_gib']:.1f} | {r['trainable_params']:,} | "
                     f"{r['first_step_s']:.1f} | {r.get('note', '')} |")  # fmt: skip
    if "speed_ratio" in row:
        memory = (f"{row['memory_ratio']:.2f}x less peak memory than the lowest peer "
                  f"({row['lowest_memory_peer']})" if "memory_ratio" in row
                  else "peak memory not measured (no GPU)")  # fmt: skip
        lines.append(f"pg_jax vs the best peer: {row['speed_ratio']:.2f}x the examples/s of "
                     f"{row['best_peer']}; {memory}")
    else:
        lines.append("pg_jax vs the best peer: - (pg_jax or every peer has no figure)")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="pg1_3b")
    p.add_argument("--configs", nargs="+", default=["224x32", "448x8"],
                   help="RESxBATCH, e.g. 448x8")
    p.add_argument("--mode", choices=sorted(SIDES), default="attn", help="the trainable set")
    p.add_argument("--sides", nargs="+", help="a subset of the mode's sides (default: all)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pg_jax_args",
                   help="extra bench_train_step.py arguments (e.g. '--remat nothing_saveable'); "
                        "default on a GPU: '--attention_impl auto' (the Pallas kernel in the "
                        "LLM, cuDNN in the image tower)")
    p.add_argument("--hf_gradient_checkpointing", action="store_true")
    p.add_argument("--peft_rank", type=int, default=8, help="LoRA rank of hf_peft and pg_jax")
    p.add_argument("--peft_alpha", type=int, default=8, help="LoRA alpha of hf_peft and pg_jax")
    p.add_argument("--peft_targets", choices=["llm", "all"], default="llm",
                   help="hf_peft: the LLM's q/k/v/o/gate/up/down, or every module of those "
                        "names (the image tower's q/k/v too)")
    p.add_argument("--keras_lora_rank", type=int, default=4)
    p.add_argument("--keras_python", default=sys.executable,
                   help="interpreter for the keras_hub side (one with keras and keras-hub)")
    p.add_argument("--side_timeout", type=float, default=0,
                   help="seconds one side may run (compile included) before it is stopped and "
                        "reported as timed out; 0: no limit")
    p.add_argument("--out", help="write the results as JSON here (after every side)")
    p.add_argument("--side", help=argparse.SUPPRESS)  # child process
    p.add_argument("--model_json", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.side:  # child process: one side, one configuration
        cfg = json.loads(a.model_json)
        batch = int(a.configs[0].split("x")[1])
        r = run_hf(cfg, a.side, batch, a.steps, a.hf_gradient_checkpointing, a.peft_rank,
                   a.peft_alpha, a.peft_targets)
        print(RESULT + json.dumps(r))
        return

    if a.pg_jax_args is None:
        a.pg_jax_args = "--attention_impl auto" if _has_gpu() else ""
    sides = a.sides or list(SIDES[a.mode])
    unknown = [s for s in sides if s not in SIDES[a.mode]]
    if unknown:
        sys.exit(f"bench_train.py: --sides {' '.join(unknown)} not in --mode {a.mode}'s sides "
                 f"({', '.join(SIDES[a.mode])})")
    for side in list(sides):
        missing = missing_packages(_python_of(a, side), side)
        if missing:
            print(f"skipping {side}: {' '.join(missing)} not installed for "
                  f"{_python_of(a, side)}", flush=True)
            sides.remove(side)

    sys.path.insert(0, ROOT)
    from pg_jax.models import variants

    results = {"args": {k: v for k, v in vars(a).items() if k not in ("side", "model_json")},
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "host": platform.node(), "command": " ".join(["python", *sys.argv]),
               "rows": []}  # fmt: skip
    for conf in a.configs:
        res, batch = map(int, conf.split("x"))
        cfg = variants.get_config(a.variant, res=res).to_dict()
        row = {"res": res, "batch": batch, "mode": a.mode, "sides": {}}
        results["rows"].append(row)
        for side in sides:
            row["sides"][side] = run_side(a, side, cfg, res, batch)
            print(json.dumps({"res": res, "batch": batch, side: row["sides"][side]}), flush=True)
            compare(row)
            if a.out:  # a run stopped part-way keeps what it measured
                with open(a.out, "w") as f:
                    json.dump(results, f, indent=2)

    devices = {r.get("device") for row in results["rows"] for r in row["sides"].values()}
    title = f"{a.variant} on {', '.join(sorted(d for d in devices if d)) or '?'}"
    print(f"\n{results['date']}, {results['command']}\npg_jax args: '{a.pg_jax_args}'; "
          f"HF gradient checkpointing: {a.hf_gradient_checkpointing}; {a.steps} timed steps")
    results["tables"] = [table(row, title) for row in results["rows"]]
    for t in results["tables"]:
        print("\n" + t)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
