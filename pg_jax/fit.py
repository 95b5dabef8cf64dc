"""Will the train step fit the device? Asked before the first step, from the compiled step.

XLA's memory analysis of the compiled step (arguments + outputs - donated + temporaries + code)
predicts its peak per device without running it. When the prediction exceeds the device's
memory, the trainer stops before loading any weights and lists which changes would fit, each
predicted the same way (by compiling the step with that change, from shapes only):
``remat_policy=nothing_saveable`` (recompute activations in the backward pass), gradient
accumulation (the same effective batch in smaller micro-batches), frozen weights in 16 bits.
``--dry_run`` prints the same report and exits.
"""

from __future__ import annotations

from collections.abc import Callable

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
