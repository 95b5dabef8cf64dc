"""What a run leaves in its workdir besides checkpoints, and the recap it prints last.

``summary.json`` holds ``{"before": step-0 evals, "after": final evals and run statistics}``; a
rerun of a finished run reads it and does nothing. At the end, ``write_final`` exports the merged
params (``params.npz`` and an HF directory, as configured) and plots the training curve, and
``print_recap`` prints the before/after table and where the report and the curve are.
"""

from __future__ import annotations

import copy
import json
import os

import jax

from pg_jax import metrics, optim
from pg_jax.models import exporter, lora, peft_io, quant


def read_summary(path: str) -> dict:
    """summary.json's contents; {} when it is missing or unreadable (it is only a record)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_summary(path: str, before: dict, after: dict) -> None:
    """summary.json: {"before": step-0 evals, "after": final evals and run statistics}."""
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"before": before, "after": after}, f, indent=1)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves half a summary


def write_final(config, workdir: str, params, model, model_cfg: dict, tokenizer_path: str,
                results: dict, log) -> str | None:
    """Exports the params (as configured) and plots the curve; returns the curve's path."""
    # LoRA factors are written on their own (lora.npz, `pg_jax.export --format peft`); the
    # exported model has them merged in, so it is a plain PaliGemma.
    factors = {k: v for k, v in optim.flatten(params).items() if k.endswith(lora.SUFFIXES)}
    if quant.has_quantized(params):
        # int8 frozen weights are exported dequantized (with their rounding); the exact base
        # is the checkpoint the run started from, which a LoRA run's lora.npz goes with.
        log("Frozen weights were 8-bit: the exported model has them dequantized.")
        params = quant.dequantize_tree(params, model.llm.get("dtype", "float32"))
    params = lora.merge_jit(params, model.lora) if factors else params
    if jax.process_count() > 1:
        # Arrays sharded across hosts are not addressable from one process: every process
        # takes part in gathering them (a collective), then process 0 writes.
        from jax.experimental import multihost_utils

        params = jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), params)
    if jax.process_index() != 0:
        return None
    written = []
    if config.export_npz:
        # The exporters fetch one array at a time, so no second full copy is made here.
        exporter.save_npz(params, os.path.join(workdir, "params.npz"))
        written.append(f"{workdir}/params.npz")
    if factors:
        peft_io.save_factors(os.path.join(workdir, "lora.npz"), jax.device_get(factors),
                             model.lora, model_cfg)
        written.append(f"{workdir}/lora.npz")
    if config.export_hf:
        exporter.save_hf(copy.deepcopy(model_cfg), params, os.path.join(workdir, "hf"),
                         tokenizer=tokenizer_path)
        written.append(f"{workdir}/hf/")
    curve = metrics.plot(
        workdir, ["training_loss", *sorted(k for k in results if k.endswith(("/loss", "/anls")))]
    )
    written += [curve] if curve else []
    if written:
        log(f"Wrote {', '.join(written)}.")
    return curve


def print_recap(log, before: dict, after: dict, summary: dict, evals: dict,
                curve: str | None) -> None:
    """The before/after table, then (last lines) where the evaluation report and curve are."""
    lines = [
        f"Done in {summary['wall_clock_s']:.0f}s in all ({summary['steps']} steps in this stage)."
    ]
    for k in sorted(after):
        b = f"{before[k]:.4f} -> " if k in before else ""
        lines.append(f"  {k}: {b}{after[k]:.4f}")
    for prefix, (ev, _) in evals.items():
        if getattr(ev, "baseline_answer", None) is not None:
            lines.append(
                f"  image-blind baseline (always {ev.baseline_answer!r}): "
                f"{prefix}/anls = {before.get(prefix + '/baseline_anls', float('nan')):.4f}"
            )
    log("\n".join(lines))
    for prefix, (ev, _) in evals.items():
        if getattr(ev, "outputs", {}).get("report"):
            log(f"Evaluation report ({prefix}): {ev.outputs['report']}")
    if curve:
        log(f"Training curve: {curve}")
