r"""Decode throughput: pg_jax.decode vs transformers' and KerasHub's generate, PaliGemma shapes.

For each resolution and batch size: examples/s for prefill + N-token greedy decode (N=16
by default, no early eos stop on either side; pg_jax's weights converted once to the decode
layout beforehand by ``pg_jax.decoding_params``, timed apart), the prefill alone, and the
per-token extend latency ((time of 1+N tokens - time of 1 token) / N). At batch 1 the per-token latency is
compared with the memory-bandwidth bound: every extend step reads all LLM weights (the tied
embedding doubles as the output head), so bound = LLM weight bytes / HBM bandwidth.

GPU (the H100 numbers in BENCHMARKS.md)::

    python scripts/bench_decode.py --out /tmp/bench_decode.json
CPU smoke test (seconds)::

    python scripts/bench_decode.py --variant tiny_pg1 --res 224 --batch 1 2 --dtype float32 \
        --iters 1 --out /tmp/bench_smoke.json

Weights: random normal pg_jax params in the benchmark dtype, exported with
``pg_jax.models.exporter.save_hf`` and loaded by ``PaliGemmaForConditionalGeneration``, so both
sides run the same weights (the script also reports whether their greedy tokens agree).
Needs jax (with CUDA on GPU), torch and transformers; NOT TensorFlow (the GPU machine has none).

KerasHub (``PaliGemmaCausalLM.generate``, JAX backend, greedy sampler, no stop token, random
bf16 weights of the same shapes built from the config: not the same weights, so no token
agreement) runs in its own process after each resolution's pg_jax and HF runs
(``scripts/bench_keras_hub.py``, under ``--keras_python``); it is skipped with a line when keras
or keras-hub is not installed. "vs best peer" is pg_jax's examples/s over the faster peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

# JAX must not grab 75% of the GPU up front: transformers needs memory in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pg_jax.decode import decode, decoding_params
from pg_jax.models import exporter, few_rows_kernel, paligemma, quant, variants
from pg_jax.models.loader import param_shapes

NEWLINE, BOS = 108, 2


# ---------------------------------------------------------------------------------------------
# Model and inputs.
# ---------------------------------------------------------------------------------------------
def random_params(model: paligemma.Model, dtype, seed: int = 0) -> dict:
    """Normal(0, 0.02) params in ``dtype``, generated on the device (a 3B model never on host)."""
    shapes = param_shapes(model)
    key = jax.random.PRNGKey(seed)
    flat = {}
    for i, (name, s) in enumerate(sorted(shapes.items())):
        # Norm scales at 0 (Gemma's RMSNorm multiplies by 1 + scale): keeps activations tame.
        if name.endswith(("scale", "bias")):
            flat[name] = jnp.zeros(s.shape, dtype)
        else:
            flat[name] = jax.random.normal(jax.random.fold_in(key, i), s.shape, dtype) * 0.02
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def make_inputs(batch: int, res: int, prompt_len: int, vocab: int, seed: int = 0) -> dict:
    """Random image and ``[bos] prompt "\\n"`` of ``prompt_len`` tokens (numpy)."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)
    text = rng.integers(3, min(vocab, 30_000), (batch, prompt_len)).astype(np.int32)
    text[:, 0], text[:, -1] = BOS, NEWLINE if vocab > NEWLINE else 3
    return {"image": image, "text": text}


def llm_weight_bytes(params: dict) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params["llm"]))


# ---------------------------------------------------------------------------------------------
# Timers: median of `iters` runs after `warmup` runs (compilation, autotuning, allocator).
# ---------------------------------------------------------------------------------------------
def _median_time(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_pg_jax(model, params, inputs, steps: int, iters: int, warmup: int) -> dict:
    batch = {"image": jnp.asarray(inputs["image"], params["img"]["embedding"]["kernel"].dtype),
             "text": jnp.asarray(inputs["text"])}  # fmt: skip

    # Converted to the decode layout once, as the evaluators and the predict CLI do (timed
    # apart: a one-off per evaluation, like moving weights into HF's layout at load time).
    convert = lambda: jax.block_until_ready(decoding_params(model, params))  # noqa: E731
    convert_seconds = _median_time(convert, iters, warmup)
    params = convert()

    def run(n):  # eos_id=-1: no row ever stops early, both sides decode exactly n tokens.
        return lambda: decode(model, params, batch, max_decode_len=n, eos_id=-1).block_until_ready()

    t_full = _median_time(run(steps), iters, warmup)
    t_one = _median_time(run(1), iters, warmup)
    t_more = _median_time(run(steps + 1), iters, warmup)
    tokens = np.asarray(decode(model, params, batch, max_decode_len=steps, eos_id=-1))
    return {"seconds": t_full, "prefill_seconds": t_one, "convert_seconds": convert_seconds,
            "per_token_ms": 1e3 * (t_more - t_one) / steps, "tokens": tokens}  # fmt: skip


def load_hf(hf_dir: str, dtype: str):
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = PaliGemmaForConditionalGeneration.from_pretrained(hf_dir, dtype=getattr(torch, dtype))
    return model.to(device).eval(), device


def bench_hf(model, device, inputs, num_image_tokens, vocab, steps, iters, warmup) -> dict:
    import torch

    b = inputs["text"].shape[0]
    ids = np.concatenate([np.full((b, num_image_tokens), vocab), inputs["text"]], axis=1)
    dtype = next(model.parameters()).dtype
    kw = {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "token_type_ids": torch.zeros(ids.shape, dtype=torch.long, device=device),
        "attention_mask": torch.ones(ids.shape, dtype=torch.long, device=device),
        "pixel_values": torch.tensor(inputs["image"].transpose(0, 3, 1, 2), dtype=dtype,
                                  device=device),
        "do_sample": False,
        # HF pads the vocabulary for <image>; those ids have no pg_jax counterpart.
        "suppress_tokens": list(range(vocab, model.config.text_config.vocab_size)),
    }  # fmt: skip

    def run(n):
        def fn():
            with torch.inference_mode():
                out = model.generate(**kw, max_new_tokens=n, min_new_tokens=n)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        return fn

    t_full = _median_time(run(steps), iters, warmup)
    t_one = _median_time(run(1), iters, warmup)
    t_more = _median_time(run(steps + 1), iters, warmup)
    tokens = run(steps)()[:, ids.shape[1] :].cpu().numpy()
    return {"seconds": t_full, "prefill_seconds": t_one,
            "per_token_ms": 1e3 * (t_more - t_one) / steps, "tokens": tokens}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------
def _device_info() -> dict:
    info = {"jax_device": jax.devices()[0].device_kind, "jax_backend": jax.default_backend(),
            "jax": jax.__version__, "host": platform.node()}  # fmt: skip
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_device"] = (torch.cuda.get_device_name() if torch.cuda.is_available()
                                else "cpu")  # fmt: skip
    except ImportError:
        pass
    return info


PEERS = ("hf", "keras_hub")


def _table(rows: list[dict], bound_ms: dict) -> str:
    head = (
        "| res | batch | pg_jax ex/s | HF ex/s | KerasHub ex/s | vs best peer | pg_jax prefill ms "
        "| HF prefill ms | KerasHub prefill ms | pg_jax ms/token | HF ms/token "
        "| KerasHub ms/token | bound ms/token | tokens agree (HF) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda v, f="{:.1f}": f.format(v) if v is not None else "-"  # noqa: E731
    for r in rows:
        sides = [r["pg_jax"], *(r.get(k) or {} for k in PEERS)]
        ex_s = " | ".join(fmt(d.get("examples_per_sec")) for d in sides)
        prefill = " | ".join(fmt(1e3 * d["prefill_seconds"] if "prefill_seconds" in d else None)
                             for d in sides)  # fmt: skip
        per_token = " | ".join(fmt(d.get("per_token_ms"), "{:.2f}") for d in sides)
        best = (f"{r['speedup_vs_best_peer']:.2f}x ({r['best_peer']})"
                if "best_peer" in r else "-")  # fmt: skip
        lines.append(
            f"| {r['res']} | {r['batch']} | {ex_s} | {best} | {prefill} | {per_token} "
            f"| {fmt(bound_ms[r['res']] if r['batch'] == 1 else None, '{:.2f}')} "
            f"| {fmt(r.get('tokens_agree'), '{:.0%}')} |"
        )
    return "\n".join(lines)


def bench_keras_hub(python: str, cfg: dict, a) -> dict:
    """KerasHub's generate() in its own process (``scripts/bench_keras_hub.py decode``)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_keras_hub.py")
    cmd = [python, script, "decode", "--model_json", json.dumps(cfg), "--batch",
           *map(str, a.batch), "--prompt_len", str(a.prompt_len), "--decode_len",
           str(a.decode_len), "--iters", str(a.iters), "--warmup", str(a.warmup)]  # fmt: skip
    # This process keeps its JAX memory pool: the child must not take 75% of the GPU either.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("SIDE_RESULT ")), None)
    if line is None:
        tail = (out.stderr + out.stdout).strip().splitlines()
        return {"error": tail[-1][-300:] if tail else f"exit status {out.returncode}"}
    return json.loads(line[len("SIDE_RESULT "):])


def keras_hub_missing(python: str) -> list[str]:
    probe = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
             "if importlib.util.find_spec(m) is None))")  # fmt: skip
    out = subprocess.run([python, "-c", probe, "jax", "keras", "keras_hub"], check=False,
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.split() if out.returncode == 0 else [f"(cannot run {python})"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--variant", default="pg1_3b", help="pg_jax.models.variants name")
    p.add_argument("--res", type=int, nargs="+", default=[224, 448])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--decode_len", type=int, default=16, help="generated tokens per example")
    p.add_argument("--prompt_len", type=int, default=16, help="[bos] question \\n tokens")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--attention_impl", default="einsum", help="pg_jax: einsum | xla | cudnn")
    p.add_argument("--frozen_dtype", default="none", choices=["none", "int8", "float8"],
                   help="pg_jax decodes with its LLM and image-encoder matrices and embedding in "
                        "8 bits, as a frozen_dtype=int8/float8 run stores them (the peers get "
                        "the dequantized weights)")
    p.add_argument("--one_row_kernel", default="on", choices=["on", "off"],
                   help="off: float8 weights' one-row products (batch 1) stay XLA's instead of "
                        "pg_jax.models.few_rows_kernel's")
    p.add_argument("--iters", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (compile, tune)")
    p.add_argument("--hbm_gbps", type=float, default=3350.0, help="HBM bandwidth, GB/s (H100)")
    p.add_argument("--skip_hf", action="store_true", help="no transformers side")
    p.add_argument("--skip_keras_hub", action="store_true", help="no KerasHub side")
    p.add_argument("--keras_python", default=sys.executable,
                   help="interpreter for the KerasHub side (one with keras and keras-hub)")
    p.add_argument("--out", required=True, help="JSON results file")
    a = p.parse_args(argv)
    few_rows_kernel.ENABLED = a.one_row_kernel == "on"

    info = _device_info()
    print(f"devices: {info}", flush=True)
    results = {"args": vars(a), "device": info, "date": time.strftime("%Y-%m-%d %H:%M"),
               "rows": [], "bound_ms_per_token": {}}  # fmt: skip
    rows = results["rows"]
    keras_hub = not a.skip_keras_hub
    if keras_hub and (missing := keras_hub_missing(a.keras_python)):
        print(f"skipping keras_hub: {' '.join(missing)} not installed for {a.keras_python}")
        keras_hub = False
    for res in a.res:
        cfg = variants.get_config(
            a.variant,
            res=res,
            vocab_size=variants.REAL_VOCAB,
            dtype=a.dtype,
            attention_impl=a.attention_impl,
        ).to_dict()
        model = paligemma.Model(**cfg)
        params = random_params(model, jnp.dtype(a.dtype))
        if a.frozen_dtype != "none":
            params = quant.quantize_tree(params, a.frozen_dtype)
        weight_bytes = llm_weight_bytes(params)
        bound = 1e3 * weight_bytes / (a.hbm_gbps * 1e9)
        results["bound_ms_per_token"][res] = bound
        results["llm_weight_bytes"] = weight_bytes
        hf = None
        if not a.skip_hf:
            # Export before benchmarking: the HF side loads exactly these weights.
            with tempfile.TemporaryDirectory() as d:
                exporter.save_hf({"img": cfg["img"], "llm": cfg["llm"]},
                                 quant.dequantize_tree(params, jnp.dtype(a.dtype)), d,
                                 dtype=a.dtype)
                hf = load_hf(d, a.dtype)
        for b in a.batch:
            inputs = make_inputs(b, res, a.prompt_len, variants.REAL_VOCAB)
            row = {"res": res, "batch": b}
            r = bench_pg_jax(model, params, inputs, a.decode_len, a.iters, a.warmup)
            ours = r.pop("tokens")
            r["examples_per_sec"] = b / r["seconds"]
            row["pg_jax"] = r
            if hf is not None:
                h = bench_hf(*hf, inputs, model.num_image_tokens, variants.REAL_VOCAB,
                             a.decode_len, a.iters, a.warmup)  # fmt: skip
                theirs = h.pop("tokens")
                h["examples_per_sec"] = b / h["seconds"]
                row["hf"] = h
                row["speedup"] = r["examples_per_sec"] / h["examples_per_sec"]
                # bf16 numerics differ between the two; a low agreement flags a real mismatch.
                row["tokens_agree"] = float(np.mean(ours == theirs))
            rows.append(row)
            print(json.dumps(row), flush=True)
        del params, hf
        if not a.skip_hf:
            import torch

            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        if keras_hub:  # after this resolution's pg_jax and HF runs have let go of their weights
            k = bench_keras_hub(a.keras_python, cfg, a)
            print(json.dumps({"res": res, "keras_hub": k}), flush=True)
            by_batch = {x["batch"]: x for x in k.get("rows", [])}
            for row in (r for r in rows if r["res"] == res):
                row["keras_hub"] = by_batch.get(row["batch"], {"error": k.get("error")})
    for row in rows:
        peers = {k: row[k]["examples_per_sec"] for k in PEERS
                 if "examples_per_sec" in (row.get(k) or {})}  # fmt: skip
        if peers:
            row["best_peer"] = max(peers, key=peers.get)
            row["speedup_vs_best_peer"] = row["pg_jax"]["examples_per_sec"] / max(peers.values())
    table = _table(rows, results["bound_ms_per_token"])
    results["table"] = table
    weights = "" if a.frozen_dtype == "none" else f", pg_jax weights in {a.frozen_dtype}"
    print(f"\n{info['jax_device']} ({a.variant}, {a.dtype}{weights}, prompt {a.prompt_len} "
          f"tokens, {a.decode_len} decoded)\n{table}")  # fmt: skip
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    assert "tensorflow" not in sys.modules, "bench_decode must run without TensorFlow"
    return 0


if __name__ == "__main__":
    sys.exit(main())
