"""Will the train step fit the device? Asked before the first step, from the compiled step.

XLA's memory analysis of the compiled step (arguments + outputs - donated + temporaries + code)
predicts its peak per device without running it. When the prediction exceeds the device's
memory, the trainer stops before loading any weights and lists which changes would fit, each
predicted the same way (by compiling the step with that change, from shapes only):
``remat_policy=nothing_saveable`` (recompute activations in the backward pass), gradient
accumulation (the same effective batch in smaller micro-batches), frozen weights in 16 bits or
int8.
``--dry_run`` prints the same report and exits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pg_jax import accounting, model_config
from pg_jax import state as state_lib
from pg_jax import step as step_lib
from pg_jax.models import paligemma

GiB = 2**30
_CONFIG_KEY = {"frozen": "frozen_dtype"}  # change keys that are not named as the config leaf


def candidates(remat_policy: str, grad_accum_steps: int, frozen_dtype: str,
               batch_size: int) -> list[dict]:
    """Changes worth predicting, cheapest in speed first; each is a dict of config leaves."""
    out = []
    remat = {} if remat_policy == "nothing_saveable" else {"remat_policy": "nothing_saveable"}
    if remat:
        out.append(remat)
    accum = grad_accum_steps
    while accum * 2 <= batch_size and batch_size % (accum * 2) == 0 and len(out) < 4:
        accum *= 2
        out.append({**remat, "grad_accum_steps": accum})
    if frozen_dtype == "float32":
        out.append({**remat, "frozen": "bfloat16"})
    if frozen_dtype not in ("int8", "float8"):  # frozen matrices in 8 bits (pg_jax.models.quant)
        out.append({**remat, "frozen": "int8"})
    return out


def report(peak: float | None, limit: float | None,
           predict: Callable[[dict], float | None] | None = None,
           changes: list[dict] = ()) -> tuple[bool, str]:
    """(fits, text): the prediction against the device's memory, and what would fit.

    Args:
      peak: predicted peak bytes per device (None: the backend does not say).
      limit: the device's memory in bytes (None: unknown, e.g. CPU).
      predict: changes -> predicted peak bytes, called for each of `changes` when the step
        does not fit.
      changes: candidate config changes (see `candidates`).
    """
    if peak is None or limit is None:
        return True, ("Fit check: the backend reports no predicted peak or no device memory; "
                      "not checked.")
    fits = peak <= limit
    verdict = "fits" if fits else "DOES NOT FIT"
    lines = [f"Fit check: predicted peak {peak / GiB:.2f} GiB per device of {limit / GiB:.2f} GiB"
             f" -> {verdict}."]
    if not fits and predict is not None:
        lines.append("  Predicted with one change (config leaves, --config.KEY=VALUE):")
        for change in changes:
            p = predict(change)
            if p is None:
                continue
            flags = " ".join(f"--config.{_CONFIG_KEY.get(k, k)}={v}" for k, v in change.items())
            lines.append(f"    {flags}: {p / GiB:.2f} GiB{'  <- fits' if p <= limit else ''}")
        lines.append("  Or: a lower resolution (res=), a smaller batch (--config.input.batch_size), "
                     "and on several devices sharding=fsdp (config arguments).")
    return fits, "\n".join(lines)


def compile_checked(run, rng, batch, log):
    """The run's train step compiled, and whether it fits: (compiled, fits, peak, device bytes).

    Logs the memory report and the fit report. ``run`` is the trainer's setup (config, model,
    model_cfg, opt, plan, mesh, device, dtypes).

    When the step does not fit, the same step with each candidate change (remat, gradient
    accumulation, 16-bit frozen weights) is compiled from shapes to predict what would.
    """
    config, device = run.config, run.device
    _, frozen_dtype, loss_scale = run.dtypes

    def compile_step(remat_policy=config.remat_policy, grad_accum_steps=config.grad_accum_steps,
                     frozen=frozen_dtype):
        m, p = run.model, run.plan
        if remat_policy != config.remat_policy or frozen != frozen_dtype:
            m = paligemma.Model(**model_config.with_remat(run.model_cfg, remat_policy))
            p = state_lib.plan(m, run.opt, run.mesh, config.sharding_strategy,
                               frozen_dtype=frozen, loss_scale=loss_scale)
        return step_lib.compile_train_step(m, run.opt, p, rng, batch, loss_len=config.loss_len,
                                           grad_accum_steps=grad_accum_steps)

    t0 = time.time()
    compiled = compile_step()
    memory, peak, limit = accounting.memory_report(compiled, device)
    log(f"Compiled the train step in {time.time() - t0:.1f}s. Memory:\n{memory}")
    fits, fit_report = report(
        peak, limit,
        predict=lambda change: accounting.memory_report(compile_step(**change), device)[1],
        changes=candidates(config.remat_policy, config.grad_accum_steps, frozen_dtype,
                               config.input.batch_size),
    )
    log(fit_report)
    return compiled, fits, peak, limit
