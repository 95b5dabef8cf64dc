"""The train loop: one compiled step per batch, and the host's bookkeeping around it.

Per step: run the step (asynchronously), read the next batch meanwhile, check that the loss and
norms are finite, log throughput every ``log_training_steps``, save a checkpoint when due, run
the evaluators that are due, and on SIGTERM / Ctrl-C save and stop (``Stopped`` says where).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable

import jax
import numpy as np

from pg_jax import accounting, checkpoint, sharding


class Evals:
    """The run's evaluators, ``{prefix: (evaluator, every_steps)}``, with their latest results."""

    def __init__(self, evals: dict, writer):
        self.evals, self.writer = evals, writer
        self.results: dict[str, float] = {}

    def run(self, step: int, params, *, every: bool = False) -> bool:
        """Runs the evaluators due at ``step`` (all of them with ``every``); whether any ran."""
        ran = False
        for ev, every_steps in self.evals.values():
            if not (every or (every_steps and step % every_steps == 0)):
                continue
            ran, t = True, time.time()
            values = dict(ev.run(params))
            self.writer.write(step, values)
            self.results.update(values)
            shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items())
            self.writer.log(f"[eval step {step}] {shown} ({time.time() - t:.1f}s)")
        return ran


@dataclasses.dataclass
class Stopped:
    """A run stopped by a signal after saving the step it was at."""

    step: int
    exit_code: int


def check_finite(step: int, m: dict, ckpt: checkpoint.Checkpointer, workdir: str) -> None:
    """Stops the run on NaN/Inf, naming the step; the last good checkpoint stays on disk."""
    names = ["training_loss", "l2_params"] + ([] if m.get("skipped") else ["l2_grads"])
    bad = {k: m[k] for k in names if not np.isfinite(m[k])}
    if bad:
        ckpt.wait()
        last = ckpt.latest_step()
        raise FloatingPointError(
            f"step {step}: non-finite {bad}. The last good checkpoint is "
            + (f"{workdir}/ckpt/{last} (step {last})" if last is not None else "none")
            + ". Lower --config.lr, check the data, or use dtype=bfloat16/float32."
        )


class Throughput:
    """``speed(n_steps, seconds)`` -> examples/s, tokens/s, step_time_s and (when the device's
    peak is known) mfu, for the run's model and batch."""

    def __init__(self, config, model_cfg: dict, plan, opt, model, device):
        self.batch_size = config.input.batch_size
        self.tokens = config.input.text_len + model.num_image_tokens
        self.flops = accounting.train_flops_per_example(
            model_cfg, plan.param_shapes, opt.trainable, config.input.text_len, config.loss_len)
        self.peak = accounting.peak_flops(device.device_kind)

    def __call__(self, n_steps: int, seconds: float) -> dict[str, float]:
        seconds = max(seconds, 1e-9)
        ex_s = n_steps * self.batch_size / seconds
        out = {"examples/s": ex_s, "tokens/s": ex_s * self.tokens,
               "step_time_s": seconds / n_steps}
        if self.peak:
            out["mfu"] = self.flops * ex_s / (self.peak * jax.device_count())
        return out


def train(compiled, train_state, rng, it, first, *, mesh, config, start_step: int,
          steps_total: int, writer, ckpt, save: Callable, evals: Evals, workdir: str,
          speed: Callable[[int, float], dict]):
    """Steps ``start_step + 1 .. steps_total``.

    Args:
      compiled: the compiled train step; train_state its (donated) state; rng its key.
      it, first: the data iterator and its first batch (a global batch already).
      mesh, config, writer, ckpt, workdir: the run's.
      save: ``save(step, train_state, data_state, force=False)`` saves a checkpoint when due.
      evals: run when due (not after the last step: the caller runs them all then).
      speed: ``speed(n_steps, seconds)`` -> throughput metrics.

    Returns:
      (train_state, data position after the last step, ``Stopped`` or None).
    """
    preempt = checkpoint.Preemption()  # SIGTERM / Ctrl-C: save, then return
    batch, t_log, n_log, device = first, time.time(), 0, jax.local_devices()[0]
    data_state = it.state()  # the position after `batch`: where a resume continues
    try:
        for step in range(start_step + 1, steps_total + 1):
            # No implicit host<->device copies inside the step: inputs are already global arrays.
            with jax.transfer_guard("disallow"):
                train_state, m = compiled(train_state, rng, batch)
            # The step runs asynchronously: read the next batch now, so that host work overlaps
            # device work, but save this step with the data position from before that read.
            data_state = it.state()
            if step < steps_total:
                batch = sharding.global_batch(next(it), mesh)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            check_finite(step, m, ckpt, workdir)
            n_log += 1
            if step % config.log_training_steps == 0 or step == steps_total:
                m.update(speed(n_log, time.time() - t_log))
                peak = accounting.measured_peak_bytes(jax.local_devices())
                if peak is not None:  # the largest of this process's devices
                    m["peak_memory_gib"] = peak / 2**30
                writer.write(step, m)
                writer.progress(step, m["training_loss"], m["examples/s"], m.get("mfu"),
                                m.get("peak_memory_gib"))
                if not config.progress_bar:
                    writer.log(
                        f"step {step}/{steps_total}: loss {m['training_loss']:.4f}, "
                        f"{m['examples/s']:.1f} examples/s"
                        + (f", MFU {m['mfu']:.1%}" if "mfu" in m else "")
                        + (f", peak {m['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in m
                           else "")
                        + f" ({jax.device_count()} x {device.device_kind})"
                    )
                t_log, n_log = time.time(), 0
            save(step, train_state, data_state)  # when due (every ckpt_steps)
            due = step < steps_total and not preempt.requested
            if due and evals.run(step, train_state["params"]):
                t_log, n_log = time.time(), 0  # keep eval time out of examples/s
            if preempt.requested:  # checked after the save and evals: either may take a while
                save(step, train_state, data_state, force=True)  # no-op if just saved
                ckpt.wait()
                writer.end_progress()
                writer.log(
                    f"Stopped by {signal.Signals(preempt.signum).name} at step {step}/"
                    f"{steps_total}: saved {workdir}/ckpt/{step}. Rerun the same command to "
                    f"resume (exit code {preempt.exit_code})."
                )
                return train_state, data_state, Stopped(step, preempt.exit_code)
    finally:
        preempt.restore_handler()
        writer.end_progress()
    return train_state, data_state, None
