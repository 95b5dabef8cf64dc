"""Start-up accounting: parameter overview, compiled memory, FLOPs per example and MFU.

FLOPs are counted for what the step must compute (a matmul of N weights costs 2N per token
forward): trained weights 6N per token (forward, activation and weight gradients), frozen LLM
weights 4N (forward and activation gradients, needed to reach earlier trained weights), the
frozen image tower 2N (forward only: nothing before it trains), attention
``4 * T^2 * heads * head_dim`` per layer forward (x3 with backward), and the tied output
projection only at the positions where the loss is taken. Embedding lookups are free.
"""

from __future__ import annotations

import numpy as np

# Dense bf16/fp16 peak FLOP/s per JAX device, matched against its device_kind (first match
# wins). A JAX device is a chip, except on TPU v2/v3, where each of a chip's two cores is one
# (Kaggle's TPU v3-8 shows 8 devices of 61.5 TFLOP/s).
PEAK_FLOPS = [
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("V100", 125e12),
    ("T4", 65e12),
    ("P100", 18.7e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),
    ("TPU v4", 275e12),
    ("TPU v3", 61.5e12),
    ("TPU v2", 22.5e12),
]


def peak_flops(device_kind: str) -> float | None:
    """The chip's peak FLOP/s, or None when unknown (then no MFU is reported)."""
    for name, flops in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return flops
    return None


def param_overview(flat_params: dict, trainable: tuple[str, ...]) -> str:
    """Counts and bytes of trainable vs frozen parameters, per top-level tower.

    Args:
      flat_params: {"img/...": array or ShapeDtypeStruct}.
      trainable: the trainable keys.

    Returns:
      A multi-line table for the log.
    """
    rows: dict[tuple[str, str], list[int]] = {}
    keys = set(trainable)
    for k, v in flat_params.items():
        kind = "trainable" if k in keys else "frozen"
        group = "/".join(k.split("/")[:2]) if k.startswith("llm/layers") else k.split("/")[0]
        n = int(np.prod(v.shape))
        r = rows.setdefault((kind, group), [0, 0])
        r[0] += n
        r[1] += n * np.dtype(v.dtype).itemsize
    lines = [f"  {'':10s} {'group':22s} {'params':>14s} {'bytes':>10s}"]
    for kind in ("trainable", "frozen"):
        tot = [0, 0]
        for (kd, group), (n, b) in sorted(rows.items()):
            if kd == kind:
                lines.append(f"  {kind:10s} {group:22s} {n:14,d} {_gib(b):>10s}")
                tot[0] += n
                tot[1] += b
        lines.append(f"  {kind:10s} {'TOTAL':22s} {tot[0]:14,d} {_gib(tot[1]):>10s}")
    return "\n".join(lines)


def _gib(b: float) -> str:
    return f"{b / 2**30:.3f}G" if b >= 2**26 else f"{b / 2**20:.2f}M"


def memory_report(compiled, device) -> tuple[str, float | None, float | None]:
    """Summarises ``compiled.memory_analysis()`` against the device's memory.

    Returns:
      (text, predicted peak bytes or None, device bytes limit or None).
    """
    try:
        m = compiled.memory_analysis()
    except Exception as e:  # noqa: BLE001 - some backends do not implement it
        return f"  memory analysis unavailable: {e}", None, None
    if m is None:
        return "  memory analysis unavailable on this backend", None, None
    arg, out, tmp = (
        m.argument_size_in_bytes,
        m.output_size_in_bytes,
        m.temp_size_in_bytes,
    )
    alias = m.alias_size_in_bytes  # donated inputs reused as outputs
    code = m.generated_code_size_in_bytes
    peak = arg + out - alias + tmp + code
    limit = None
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        limit = stats["bytes_limit"]
    text = (
        f"  arguments {_gib(arg)}, outputs {_gib(out)} (aliased {_gib(alias)}), "
        f"temporaries {_gib(tmp)}, code {_gib(code)} -> predicted peak {_gib(peak)} per device"
        + (f" of {_gib(limit)}" if limit else " (device memory unknown)")
    )
    return text, peak, limit


def measured_peak_bytes(devices) -> int | None:
    """The largest ``peak_bytes_in_use`` of these devices since the process started (what the
    benchmarks report for every framework), or None where no device reports it (CPU)."""
    peaks = []
    for d in devices:
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def train_flops_per_example(
    model_cfg: dict,
    flat_params: dict,
    trainable: tuple[str, ...],
    text_len: int,
    loss_len: int,
) -> float:
    """Model FLOPs of one training example (see the module docstring).

    Args:
      model_cfg: {"img": ..., "llm": ...} model kwargs.
      flat_params: {"img/...": array or ShapeDtypeStruct}.
      trainable: trainable keys.
      text_len: text tokens fed to the LLM per example.
      loss_len: positions where logits are computed.

    Returns:
      FLOPs per example.
    """
    img, llm = model_cfg["img"], model_cfg["llm"]
    patches = (img["image_size"] // img["patch_size"]) ** 2
    keys = set(trainable)
    size = lambda k: int(np.prod(flat_params[k].shape))
    vit_trains = any(k.startswith("img/") for k in keys)
    flops = 0.0
    for k in flat_params:
        if k == "llm/embedder/input_embedding" or "pos_embedding" in k:
            continue  # lookups; the tied head is counted below
        if k.startswith("img/"):
            per_token = (6 if k in keys else (4 if vit_trains else 2)) * size(k)
            flops += per_token * patches
        else:
            flops += (6 if k in keys else 4) * size(k) * (patches + text_len)
    # Attention scores and weighted sums: 4 T^2 H N per layer forward, x3 with backward.
    seq = patches + text_len
    llm_attn = 4 * seq**2 * llm["num_heads"] * llm["head_dim"] * llm["depth"]
    vit_attn = 4 * patches**2 * img["width"] * img["depth"]
    flops += 3 * llm_attn + (3 if vit_trains else 1) * vit_attn
    # Tied output projection at the loss positions: forward + activation grad (+ weight grad).
    emb = llm["vocab_size"] * llm["width"]
    emb_trains = "llm/embedder/input_embedding" in keys
    flops += (6 if emb_trains else 4) * emb * loss_len
    return flops
