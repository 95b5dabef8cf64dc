r"""Fine-tunes PaliGemma: ``python -m pg_jax.train --config configs/docvqa.py --workdir DIR``.

Wiring only, kept short on purpose: each job is in the module named after it. `main` reads the
absl flags and calls `train(config, workdir)`, which reads top to bottom:

  workdir -> mesh -> model config (`model_config`) -> data (`data.training`) -> optimizer
  (`optim`) -> state plan (`state`) -> resume (`checkpoint`) -> compile and fit check (`step`,
  `fit`) -> arrays (`state`) -> evaluators (`evaluators.common`) -> loop (`loop`) -> final
  evals, export, summary and recap (`run_outputs`).

Exit status: 0 when the run is complete (a rerun of a complete run does nothing and exits 0);
2 for a config, data or checkpoint error, printed as one line; 3 when a loss or norm is not
finite; 130 (SIGINT, Ctrl-C) or 143 (SIGTERM) when stopped by a signal, after saving a
checkpoint of the step in flight: rerun the same command to resume. A second Ctrl-C exits at
once. So ``train && evaluate`` never evaluates an unfinished run.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import jax

# Random numbers independent of the sharding: same init on 1 or 8 devices, no resharding.
jax.config.update("jax_threefry_partitionable", True)

from absl import app, flags, logging
from ml_collections import config_flags

from pg_jax import (
    accounting,
    checkpoint,
    config_cli,
    demo,
    devices,
    fit,
    loop,
    metrics,
    model_config,
    optim,
    run_outputs,
    sharding,
)
from pg_jax import state as state_lib
from pg_jax.data import training as training_data
from pg_jax.evaluators import common as evaluators
from pg_jax.models import loader, lora, paligemma
from pg_jax.pp.tokenizer import Tokenizer, get_default_tokenizer_path

# Exit status besides 0 and config_cli.USAGE_ERROR (2): see the module docstring.
EXIT_NON_FINITE = 3
EXIT_SIGINT = 128 + signal.SIGINT
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and exports go.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Compile the train step, print whether it fits the device's memory (and "
    "what would fit if not), then exit without training.")


@dataclasses.dataclass
class _Run:
    """What the stages of one run share (built by `_setup`)."""

    config: object
    workdir: str
    device: object
    mesh: jax.sharding.Mesh
    dtypes: tuple[str, str, bool]  # compute, frozen storage, dynamic loss scaling
    tok_path: str
    model_cfg: dict
    model: paligemma.Model
    source: object
    make_iterator: object
    steps_total: int
    opt: optim.Optimizer
    plan: state_lib.StatePlan
    t_start: float = 0.0
    ckpt: checkpoint.Checkpointer | None = None
    run_info: dict | None = None  # the checkpoint's fingerprint of the run
    writer: metrics.MetricWriter | None = None

    @property
    def summary_path(self) -> str:
        return os.path.join(self.workdir, "summary.json")


def _setup(config, workdir: str) -> _Run:
    """workdir -> mesh -> model -> data -> optimizer -> state plan (shapes only, no arrays)."""
    t_start = time.time()
    os.makedirs(workdir, exist_ok=True)
    if config.demo and jax.process_index() == 0:
        demo.print_banner(config, workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    device = jax.local_devices()[0]  # addressable: its memory stats are readable on every host
    dtype, frozen_dtype, loss_scale = devices.resolve_dtypes(config, device)
    mesh = sharding.make_mesh(config.mesh)  # every array below is a global jax.Array
    tok_path = config.tokenizer or get_default_tokenizer_path()
    model_cfg = model_config.build(config, dtype=dtype, vocab_size=Tokenizer(tok_path).vocab_size,
                                   tokenizer_path=tok_path)
    model = paligemma.Model(**model_cfg)
    source, make_iterator = training_data.from_config(
        config, vocab_size=model_cfg["llm"]["vocab_size"])
    steps_total = training_data.total_steps(config, source.num_examples)
    opt = optim.make(config, optim.unflatten(loader.param_shapes(model)), steps_total)
    # Shapes, dtypes (trainable masters f32, frozen in frozen_dtype) and shardings; no arrays.
    plan = state_lib.plan(model, opt, mesh, config.sharding_strategy, frozen_dtype=frozen_dtype,
                          loss_scale=loss_scale)
    return _Run(config, workdir, device, mesh, (dtype, frozen_dtype, loss_scale), tok_path,
                model_cfg, model, source, make_iterator, steps_total, opt, plan, t_start)


def train(config, workdir: str, *, dry_run: bool = False) -> dict:
    """Runs (or resumes) one training run.

    Args:
      config: a ConfigDict from configs/*.py.
      workdir: the run's directory (created).
      dry_run: stop after compiling the step and printing the fit check (nothing is trained).

    Returns:
      The final evaluation results and run statistics, {name: value}.
    """
    run = _setup(config, workdir)
    # Resume: the newest committed checkpoint of this workdir, if any.
    run.ckpt = ckpt = checkpoint.Checkpointer(workdir, every_steps=config.ckpt_steps,
                                              keep=config.keep_ckpts)
    run.run_info = checkpoint.run_fingerprint(run.plan.param_shapes, run.opt.trainable,
                                              run.dtypes[2])
    finished = run_outputs.read_summary(run.summary_path).get("after", {})
    if finished.get("steps") == run.steps_total and ckpt.latest_step() == run.steps_total:
        print(f"{workdir} holds a finished run of {run.steps_total} steps (summary.json); "
              "nothing to do. Use a new --workdir to train again.", flush=True)
        ckpt.close()
        return finished
    restored = ckpt.restore_latest(
        checkpoint.savable(run.plan.abstract, run.opt.trainable), run.run_info,
        log=lambda line: print(line, flush=True) if jax.process_index() == 0 else None)
    saved, data_state = restored or (None, {"step": 0, "iterator": None})
    start_step = data_state["step"]
    run.writer = metrics.MetricWriter(workdir, total_steps=run.steps_total,
                                      progress_bar=config.progress_bar, start_step=start_step)
    _log_start(run, run.writer.log, start_step if restored is not None else None)
    it = run.make_iterator(batch_size=config.input.batch_size // jax.process_count(),
                           seed=config.seed, state=data_state["iterator"])

    # Compile once, from shapes. Whether the step fits the device is known here, before the
    # weights take any memory.
    first = sharding.global_batch(next(it), run.mesh)
    replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
    rng = jax.device_put(jax.random.PRNGKey(config.seed), replicated)
    compiled, fits, peak, limit = fit.compile_checked(run, rng, first, run.writer.log)
    if dry_run or not fits:
        ckpt.close()
        run.writer.close()
        if not fits:
            raise ValueError(f"the train step does not fit the device "
                             f"({run.device.device_kind}); see the fit check above for changes "
                             "that would")
        return {"dry_run": True, "predicted_peak_bytes": peak, "device_bytes": limit,
                "fits": fits}
    return _train_compiled(run, compiled, rng, it, first, saved, start_step)


def _train_compiled(run: _Run, compiled, rng, it, first, saved, start_step: int) -> dict:
    """The arrays, the evaluators, the loop and the end of the run (see `train`)."""
    config, ckpt, writer = run.config, run.ckpt, run.writer
    # Loaded or initialised straight into their shardings, then the resumed trainable
    # parameters and optimizer state put in.
    train_state = state_lib.materialize(
        run.plan, run.model, init_path=config.model_init, seed=config.seed,
        model_cfg=run.model_cfg, init_missing=tuple(config.get("init_missing", ())),
        adapter=lora.from_config(config.get("lora"))[1])
    if saved is not None:
        train_state = checkpoint.restore_into(train_state, saved, run.opt.trainable)
        del saved
    evals = loop.Evals(evaluators.from_config(
        training_data.resolve_eval_data(config), model=run.model,
        tokenizer=config.tokenizer or None, workdir=run.workdir), writer)
    # The "before" metrics outlive an interruption: written once, read back on resume.
    before = run_outputs.read_summary(run.summary_path).get("before", {}) if start_step else {}
    if start_step == 0 and config.eval_at_start:
        evals.run(0, train_state["params"], every=True)
        before = dict(evals.results)
        run_outputs.write_summary(run.summary_path, before, {})

    def save(step, state, data_position, force=False):
        """Saves what a resume needs: trainable params, optimizer state, step, data position."""
        ckpt.save(step, checkpoint.savable(state, run.opt.trainable),
                  {"step": step, "iterator": data_position, "run": run.run_info}, force=force)

    train_state, data_state, stopped = loop.train(
        compiled, train_state, rng, it, first, mesh=run.mesh, config=config,
        start_step=start_step, steps_total=run.steps_total, writer=writer, ckpt=ckpt, save=save,
        evals=evals, workdir=run.workdir,
        speed=loop.Throughput(config, run.model_cfg, run.plan, run.opt, run.model, run.device))
    if stopped:
        ckpt.close()
        writer.close()
        return {"preempted_at": stopped.step, "exit_code": stopped.exit_code}

    # End: final evals, last checkpoint, merged params (.npz + HF), curve, summary, recap.
    evals.run(run.steps_total, train_state["params"], every=True)
    save(run.steps_total, train_state, data_state, force=True)
    ckpt.close()
    curve = run_outputs.write_final(config, run.workdir, train_state["params"], run.model,
                                    run.model_cfg, run.tok_path, evals.results, writer.log)
    summary = {**evals.results, "wall_clock_s": time.time() - run.t_start,
               "steps": run.steps_total}
    run_outputs.print_recap(writer.log, before, evals.results, summary, evals.evals, curve)
    run_outputs.write_summary(run.summary_path, before, summary)
    writer.close()
    return summary


def _log_start(run: _Run, log, resumed_step: int | None) -> None:
    """The run's first log lines: devices and precision, model and data, parameters."""
    config, device = run.config, run.device
    dtype, frozen_dtype, loss_scale = run.dtypes
    log(f"Devices: {jax.device_count()} x {device.device_kind} ({jax.process_count()} "
        f"process(es)), mesh {dict(run.mesh.shape)}; "
        f"{devices.describe(config.dtype, config.attention_impl, device, run.model_cfg)}, "
        f"frozen weights {frozen_dtype}{', dynamic loss scaling' if loss_scale else ''}.")
    log(f"Model from {config.model_init or 'random init (' + config.model_name + ')'}; "
        f"{run.source.num_examples} training examples; {run.steps_total} steps of "
        f"{config.input.batch_size}.")
    if resumed_step is not None:
        log(f"Resumed from {run.workdir}/ckpt/{resumed_step} (step {resumed_step}).")
    log("Parameters:\n" + accounting.param_overview(run.plan.param_shapes, run.opt.trainable))
    log("Sharded parameters:\n"
        + sharding.describe(run.plan.param_shardings, run.plan.param_shapes))


def main(argv) -> None:
    """Runs `train` and exits with the status documented in the module docstring."""
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax and XLA log every save at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        sharding.initialize_distributed()  # before anything touches the devices
        result = train(_CONFIG.value, _WORKDIR.value, dry_run=_DRY_RUN.value)
    except KeyboardInterrupt:  # Ctrl-C outside the train loop (start-up, final evals, export)
        print("\nInterrupted. Committed checkpoints are kept: rerun the same command to resume.",
              file=sys.stderr)
        sys.exit(EXIT_SIGINT)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_NON_FINITE)
    except (ValueError, FileNotFoundError) as e:  # bad config, data or checkpoint: say which
        print(f"error: {e}", file=sys.stderr)
        sys.exit(config_cli.USAGE_ERROR)
    sys.exit(result.get("exit_code", 0))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=config_cli.parse_flags)
