r"""Fine-tunes PaliGemma: ``python -m pg_jax.train --config configs/docvqa.py --workdir DIR``.

Wiring only: the loss and update are in `pg_jax.step`, the optimizer in
`pg_jax.optim`, sharding in `pg_jax.sharding`, checkpoints in `pg_jax.checkpoint`. `main` reads
the absl flags and calls `train(config, workdir)`, which reads top to bottom:

  workdir -> mesh -> model & params -> optimizer -> data -> compile ->
  resume -> evaluators -> train loop -> final export.

Exit status: 0 when the run is complete (a rerun of a complete run does nothing and exits 0);
2 for a config, data or checkpoint error, printed as one line; 3 when a loss or norm is not
finite; 130 (SIGINT, Ctrl-C) or 143 (SIGTERM) when stopped by a signal, after saving a
checkpoint of the step in flight: rerun the same command to resume. A second Ctrl-C exits at
once. So ``train && evaluate`` never evaluates an unfinished run.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import signal
import sys
import time

import jax

# Random numbers independent of the sharding: same init on 1 or 8 devices, no resharding.
jax.config.update("jax_threefry_partitionable", True)

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from pg_jax import accounting, checkpoint, config_cli, devices, fit, metrics, optim, sharding
from pg_jax import state as state_lib
from pg_jax import step as step_lib
from pg_jax.evaluators import common as evaluators
from pg_jax.models import exporter, loader, lora, paligemma, peft_io, variants
from pg_jax.pp.tokenizer import Tokenizer, get_default_tokenizer_path

# Exit status (besides 0, done): 2 a config, data or checkpoint error (one line says which);
# 3 a non-finite loss or norm (the step is named; checkpoints up to the last good step stay);
# 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM after saving a checkpoint (rerun to resume).
EXIT_NON_FINITE = 3
EXIT_SIGINT = 128 + signal.SIGINT
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and exports go.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Compile the train step, print whether it fits the device's memory (and "
    "what would fit if not), then exit without training.")

DEMO_BANNER = """\
No checkpoint and no data configured: running the EMBEDDED DEFAULT.
  model: a tiny PaliGemma ({variant}, real architecture) at {res} px, pretrained to read this
  kind of page (the shipped {ckpt}), but new to DocVQA questions;
  data: the synthetic DocVQA set ({data}), tokenizer: the small project tokenizer.
  It fine-tunes only llm/layers/attn/*, as you would from a released checkpoint, and writes
  {workdir}/docvqa_val.html (answers beside their pages) and {workdir}/training_curve.png.
To train on real files:
  python -m pg_jax.train --workdir DIR --config configs/docvqa.py:res=448,\\
ckpt=paligemma-3b-pt-448.npz,tokenizer=paligemma_tokenizer.model,data=/data/docvqa_448"""


def resolve_data(spec: dict, config) -> dict:
    """A data spec with the synthetic placeholder replaced by the generated set's directory."""
    from pg_jax.data import synthetic  # generation needs PIL only

    return synthetic.resolve_placeholder(spec, config.synthetic)


def prepared_training_data(spec: dict, config) -> dict:
    """With ``config.input.cache_dir``, a raw DocVQA source is prepared once into that cache
    (decoded and resized to ``config.input.res``) and read from there; later runs with the
    same options reuse it, and different options are refused rather than mixed in."""
    readers = {"docvqa_hf": "hf-parquet", "docvqa_json": "docvqa-json"}
    if not config.input.cache_dir or spec["name"] not in readers:
        return spec
    from pg_jax import prepare_data

    selection = {k: spec[k] for k in ("limit", "fraction", "sample_seed", "question_types")
                 if spec.get(k) is not None}
    prepare_data.prepare(readers[spec["name"]], spec["path"], spec.get("split", "train"),
                         config.input.cache_dir, res=config.input.res, **selection)
    return {"name": "docvqa_prepared", "path": config.input.cache_dir}


def total_steps(config, num_examples: int) -> int:
    """The run's length: config.total_steps if set (it wins over total_epochs, so that
    ``--config.total_steps=N`` works on any config), else total_epochs converted to steps."""
    if config.total_steps is not None:
        if config.total_steps < 1:
            raise ValueError(f"config.total_steps={config.total_steps}: expected at least 1")
        return int(config.total_steps)
    if config.total_epochs is None or config.total_epochs <= 0:
        raise ValueError("set config.total_steps or config.total_epochs (a positive number)")
    return max(1, math.ceil(config.total_epochs * num_examples / config.input.batch_size))


def resolve_dtypes(config) -> tuple[str, str, bool]:
    """(compute dtype, frozen storage dtype, dynamic loss scaling) from the 'auto' settings."""
    dtype = devices.compute_dtype(config.dtype, jax.local_devices()[0]).value
    frozen = config.frozen_dtype if config.frozen_dtype != "auto" else dtype
    scale = config.loss_scale == "dynamic" or (config.loss_scale == "auto" and dtype == "float16")
    return dtype, frozen, scale


def unroll_llm_layers(config) -> bool:
    """config.unroll_llm_layers: "true", "false", or "auto" = unrolled unless rematerialised.

    Unrolled layers train faster and keep less memory than a rolled scan when activations are
    saved (BENCHMARKS.md). With remat they stay rolled: unrolled, XLA is free to schedule every
    layer's recomputation early, and the memory that remat should save is not saved.
    """
    choice = str(config.unroll_llm_layers).lower()
    if choice not in ("auto", "true", "false"):
        raise ValueError(f"config.unroll_llm_layers={choice!r}: expected auto, true or false")
    if choice == "auto":
        return config.remat_policy == "none"
    return choice == "true"


def train(config, workdir: str, *, dry_run: bool = False) -> dict:
    """Runs (or resumes) one training run.

    Args:
      config: a ConfigDict from configs/*.py.
      workdir: the run's directory (created).
      dry_run: stop after compiling the step and printing the fit check (nothing is trained).

    Returns:
      The final evaluation results and run statistics, {name: value}.
    """
    t_start = time.time()
    os.makedirs(workdir, exist_ok=True)
    if config.demo and jax.process_index() == 0:
        print(
            DEMO_BANNER.format(
                variant=config.model_name,
                res=config.input.res,
                data=f"{config.synthetic} difficulty",
                ckpt=config.model_init,
                workdir=workdir,
            ),
            flush=True,
        )
    init_path = config.model_init

    # ------------------------------------------------------------------------------------------
    # Workdir: resolved config, writer.
    # ------------------------------------------------------------------------------------------
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    dtype, frozen_dtype, use_loss_scale = resolve_dtypes(config)

    # ------------------------------------------------------------------------------------------
    # Devices and mesh: every array below is a global jax.Array placed by NamedSharding.
    # ------------------------------------------------------------------------------------------
    mesh = sharding.make_mesh(config.mesh)
    device = jax.local_devices()[0]  # addressable: its memory stats are readable on every host

    # ------------------------------------------------------------------------------------------
    # Model: from a checkpoint (architecture read off its shapes) or a named variant.
    # ------------------------------------------------------------------------------------------
    tok_path = config.tokenizer or get_default_tokenizer_path()
    vocab = Tokenizer(tok_path).vocab_size
    model_kw = {
        "dtype": dtype,
        "remat_policy": config.remat_policy,
        "attention_impl": config.attention_impl,
    }
    if init_path:
        model_cfg = loader.read_model_config(init_path, **model_kw)
    else:
        model_cfg = variants.get_config(
            config.model_name, res=config.input.res, vocab_size=vocab, **model_kw
        ).to_dict()
    if model_cfg["img"]["image_size"] != config.input.res:
        raise ValueError(
            f"{init_path} is a {model_cfg['img']['image_size']} px model but "
            f"config res={config.input.res}; pass the matching res="
        )
    if model_cfg["llm"]["vocab_size"] < vocab:
        raise ValueError(
            f"tokenizer {tok_path} has {vocab} pieces but the model only "
            f"{model_cfg['llm']['vocab_size']}"
        )
    if unroll_llm_layers(config):
        model_cfg["llm"]["scan_unroll"] = model_cfg["llm"]["depth"]
    model_cfg["lora"], lora_adapter = lora.from_config(config.get("lora"))
    model = paligemma.Model(**model_cfg)

    # ------------------------------------------------------------------------------------------
    # Data: a per-process iterator of numpy batches, restorable from a position.
    # ------------------------------------------------------------------------------------------
    # make_iterator(batch_size=, seed=, state=) -> this process's batches, resumable.
    if config.input.data["name"] == "random":  # benchmarking: no files, no TensorFlow
        from pg_jax.data import random_batches

        source = random_batches.RandomSource(
            res=config.input.res,
            text_len=config.input.text_len,
            vocab_size=model_cfg["llm"]["vocab_size"],
            # As many answer tokens as the loss scores (at most half the text).
            answer_len=min(config.loss_len, config.input.text_len // 2),
            process_index=jax.process_index(),
        )
        make_iterator = source.make_iterator
    else:
        from pg_jax.data import core, input_pipeline  # TensorFlow enters here, and only here

        source = core.get(
            **prepared_training_data(resolve_data(config.input.data, config), config)
        )
        pp = input_pipeline.pp_train(
            config.input.res, config.input.text_len, config.input.prompt, config.tokenizer or None
        )
        make_iterator = functools.partial(
            input_pipeline.make_iterator, source, pp, shuffle_buffer=config.input.shuffle_buffer
        )
    steps_total = total_steps(config, source.num_examples)
    opt = optim.make(config, optim.unflatten(loader.param_shapes(model)), steps_total)
    # Shapes, dtypes (trainable masters f32, frozen in frozen_dtype) and shardings; no arrays.
    state_plan = state_lib.plan(model, opt, mesh, config.sharding_strategy,
                                frozen_dtype=frozen_dtype, loss_scale=use_loss_scale)
    flat_shapes = state_plan.param_shapes

    # ------------------------------------------------------------------------------------------
    # Resume: the newest committed checkpoint of this workdir, if any.
    # ------------------------------------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(workdir, every_steps=config.ckpt_steps, keep=config.keep_ckpts)
    run_info = checkpoint.run_fingerprint(flat_shapes, opt.trainable, use_loss_scale)
    summary_path = os.path.join(workdir, "summary.json")
    finished = _read_summary(summary_path).get("after", {})
    if finished.get("steps") == steps_total and ckpt.latest_step() == steps_total:
        print(f"{workdir} holds a finished run of {steps_total} steps (summary.json); nothing "
              "to do. Use a new --workdir to train again.", flush=True)
        ckpt.close()
        return finished
    start_step, iter_state = 0, None
    restored = ckpt.restore_latest(
        checkpoint.savable(state_plan.abstract, opt.trainable), run_info,
        log=lambda line: print(line, flush=True) if jax.process_index() == 0 else None,
    )
    latest = None
    if restored is not None:
        saved, data_state = restored
        start_step, iter_state = data_state["step"], data_state["iterator"]
        latest = start_step

    writer = metrics.MetricWriter(
        workdir,
        total_steps=steps_total,
        progress_bar=config.progress_bar,
        start_step=start_step,
    )
    log = writer.log
    log(
        f"Devices: {jax.device_count()} x {device.device_kind} ({jax.process_count()} "
        f"process(es)), mesh {dict(mesh.shape)}; "
        f"{devices.describe(config.dtype, config.attention_impl, device, model_cfg)}, "
        f"frozen weights {frozen_dtype}"
        f"{', dynamic loss scaling' if use_loss_scale else ''}."
    )
    log(
        f"Model from {init_path or 'random init (' + config.model_name + ')'}; "
        f"{source.num_examples} training examples; {steps_total} steps of "
        f"{config.input.batch_size}."
    )
    if latest is not None:
        log(f"Resumed from {workdir}/ckpt/{latest} (step {start_step}).")
    log("Parameters:\n" + accounting.param_overview(flat_shapes, opt.trainable))
    log("Sharded parameters:\n" + sharding.describe(state_plan.param_shardings, flat_shapes))

    local_batch = config.input.batch_size // jax.process_count()
    it = make_iterator(batch_size=local_batch, seed=config.seed, state=iter_state)

    # ------------------------------------------------------------------------------------------
    # Compile once, from shapes: donated state, explicit output shardings. Whether the step
    # fits the device is known here, before the weights take any memory.
    # ------------------------------------------------------------------------------------------
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    first = sharding.global_batch(next(it), mesh)
    rng = jax.device_put(jax.random.PRNGKey(config.seed), replicated)

    def compile_step(remat_policy=config.remat_policy, grad_accum_steps=config.grad_accum_steps,
                     frozen=frozen_dtype):
        """The train step compiled for the abstract state (the run's, or one with a change)."""
        m, plan = model, state_plan
        if remat_policy != config.remat_policy or frozen != frozen_dtype:
            cfg = copy.deepcopy(model_cfg)
            for tower in ("img", "llm"):
                cfg[tower]["remat_policy"] = remat_policy
            cfg["llm"]["scan_unroll"] = cfg["llm"]["depth"] if remat_policy == "none" else 1
            m = paligemma.Model(**cfg)
            plan = state_lib.plan(m, opt, mesh, config.sharding_strategy,
                                  frozen_dtype=frozen, loss_scale=use_loss_scale)
        update_fn = step_lib.make_update_fn(
            m, opt, loss_len=config.loss_len, grad_accum_steps=grad_accum_steps
        )
        jitted = jax.jit(update_fn, donate_argnums=(0,),
                         out_shardings=(plan.shardings, replicated))
        return jitted.lower(plan.abstract, rng, first).compile(step_lib.compiler_options())

    t0 = time.time()
    compiled = compile_step()
    report, peak, limit = accounting.memory_report(compiled, device)
    log(f"Compiled the train step in {time.time() - t0:.1f}s. Memory:\n{report}")
    fits, fit_report = fit.report(
        peak, limit,
        predict=lambda change: accounting.memory_report(compile_step(**change), device)[1],
        changes=fit.candidates(config.remat_policy, config.grad_accum_steps, frozen_dtype,
                               config.input.batch_size),
    )
    log(fit_report)
    if dry_run or not fits:
        ckpt.close()
        writer.close()
        if not fits:
            raise ValueError(f"the train step does not fit the device ({device.device_kind}); "
                             "see the fit check above for changes that would")
        return {"dry_run": True, "predicted_peak_bytes": peak, "device_bytes": limit,
                "fits": fits}
    flops_ex = accounting.train_flops_per_example(
        model_cfg, flat_shapes, opt.trainable, config.input.text_len, config.loss_len
    )
    peak_flops = accounting.peak_flops(device.device_kind)

    # Now the arrays: loaded or initialised straight into their shardings, then the resumed
    # trainable parameters and optimizer state put in.
    train_state = state_lib.materialize(
        state_plan, model, init_path=init_path, seed=config.seed, model_cfg=model_cfg,
        init_missing=tuple(config.get("init_missing", ())), adapter=lora_adapter,
    )
    if restored is not None:
        train_state = checkpoint.restore_into(train_state, saved, opt.trainable)
        del saved

    # ------------------------------------------------------------------------------------------
    # Evaluators: {prefix: (evaluator, every_steps)}; their data is read on first use.
    # ------------------------------------------------------------------------------------------
    eval_cfg = {
        k: dict(
            v,
            data=resolve_data(v["data"], config),
            **(
                {"baseline_data": resolve_data(v["baseline_data"], config)}
                if "baseline_data" in v
                else {}
            ),
        )
        for k, v in config.evals.items()
    }
    evals = evaluators.from_config(
        eval_cfg, model=model, tokenizer=config.tokenizer or None, workdir=workdir
    )
    results: dict[str, float] = {}

    def run_evals(step: int, due) -> bool:
        """Runs the evaluators that are due; returns whether any ran."""
        ran = False
        for ev, every in evals.values():
            if not due(every):
                continue
            ran = True
            t = time.time()
            values = dict(ev.run(train_state["params"]))
            writer.write(step, values)
            results.update(values)
            shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items())
            log(f"[eval step {step}] {shown} ({time.time() - t:.1f}s)")
        return ran

    # The "before" metrics outlive an interruption: written once, read back on resume.
    results_before = _read_summary(summary_path).get("before", {}) if start_step else {}
    if start_step == 0 and config.eval_at_start:
        run_evals(0, lambda every: True)
        results_before = dict(results)
        _write_summary(summary_path, results_before, {})

    # ------------------------------------------------------------------------------------------
    # Train loop: one jitted step per batch; the host checks finiteness and writes metrics.
    # ------------------------------------------------------------------------------------------
    preempt = checkpoint.Preemption()  # SIGTERM / Ctrl-C: save, then return (see below)

    def save_checkpoint(step: int, data_state: dict, force: bool = False) -> None:
        """Saves what a resume needs: trainable params, optimizer state, step, data position."""
        ckpt.save(step, checkpoint.savable(train_state, opt.trainable),
                  {"step": step, "iterator": data_state, "run": run_info}, force=force)

    batch, t_log, n_log, step = first, time.time(), 0, start_step
    data_state = it.state()  # the position after `batch`: where a resume continues
    tokens_per_ex = config.input.text_len + model.num_image_tokens
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
            _check_finite(step, m, ckpt, workdir)
            n_log += 1
            if step % config.log_training_steps == 0 or step == steps_total:
                dt = max(time.time() - t_log, 1e-9)
                ex_s = n_log * config.input.batch_size / dt
                m.update(
                    {
                        "examples/s": ex_s,
                        "tokens/s": ex_s * tokens_per_ex,
                        "step_time_s": dt / n_log,
                    }
                )
                if peak_flops:
                    m["mfu"] = flops_ex * ex_s / (peak_flops * jax.device_count())
                writer.write(step, m)
                writer.progress(step, m["training_loss"], ex_s, m.get("mfu"))
                if not config.progress_bar:
                    log(
                        f"step {step}/{steps_total}: loss {m['training_loss']:.4f}, "
                        f"{ex_s:.1f} examples/s"
                        + (f", MFU {m['mfu']:.1%}" if "mfu" in m else "")
                        + f" ({jax.device_count()} x {device.device_kind})"
                    )
                t_log, n_log = time.time(), 0
            save_checkpoint(step, data_state)  # when due (every ckpt_steps)
            if step < steps_total and not preempt.requested:
                if run_evals(step, lambda every, s=step: every and s % every == 0):
                    t_log, n_log = time.time(), 0  # keep eval time out of examples/s
            if preempt.requested:  # checked after the save and evals: either may take a while
                save_checkpoint(step, data_state, force=True)  # no-op if this step was just saved
                ckpt.wait()
                writer.end_progress()
                log(
                    f"Stopped by {signal.Signals(preempt.signum).name} at step {step}/"
                    f"{steps_total}: saved {workdir}/ckpt/{step}. Rerun the same command to "
                    f"resume (exit code {preempt.exit_code})."
                )
                ckpt.close()
                writer.close()
                return {"preempted_at": step, "exit_code": preempt.exit_code}
    finally:
        preempt.restore_handler()
        writer.end_progress()

    # ------------------------------------------------------------------------------------------
    # End: final evals, last checkpoint, merged params (.npz + HF), curve, summary.
    # ------------------------------------------------------------------------------------------
    run_evals(steps_total, lambda every: True)
    save_checkpoint(steps_total, data_state, force=True)
    ckpt.close()
    params_out = train_state["params"]
    # LoRA factors are written on their own (lora.npz, `pg_jax.export --format peft`); the
    # exported model has them merged in, so it is a plain PaliGemma.
    factors = {k: v for k, v in optim.flatten(params_out).items() if k.endswith(lora.SUFFIXES)}
    params_out = lora.merge_jit(params_out, model.lora) if factors else params_out
    if jax.process_count() > 1:
        # Arrays sharded across hosts are not addressable from one process: every process
        # takes part in gathering them (a collective), then process 0 writes.
        from jax.experimental import multihost_utils

        params_out = jax.tree.map(
            lambda x: multihost_utils.process_allgather(x, tiled=True), params_out
        )
    curve = None
    if jax.process_index() == 0:
        written = []
        if config.export_npz:
            # The exporters fetch one array at a time, so no second full copy is made here.
            exporter.save_npz(params_out, os.path.join(workdir, "params.npz"))
            written.append(f"{workdir}/params.npz")
        if factors:
            peft_io.save_factors(os.path.join(workdir, "lora.npz"), jax.device_get(factors),
                                 model.lora, model_cfg)
            written.append(f"{workdir}/lora.npz")
        if config.export_hf:
            exporter.save_hf(
                copy.deepcopy(model_cfg), params_out, os.path.join(workdir, "hf"), tokenizer=tok_path
            )
            written.append(f"{workdir}/hf/")
        curve = metrics.plot(
            workdir,
            [
                "training_loss",
                *sorted(k for k in results if k.endswith(("/loss", "/anls"))),
            ],
        )
        written += [curve] if curve else []
        if written:
            log(f"Wrote {', '.join(written)}.")
    summary = {**results, "wall_clock_s": time.time() - t_start, "steps": steps_total}
    _print_summary(log, results_before, results, summary, evals)
    # Last lines: where to look (the evaluation report with page thumbnails, the curve).
    for prefix, (ev, _) in evals.items():
        if getattr(ev, "outputs", {}).get("report"):
            log(f"Evaluation report ({prefix}): {ev.outputs['report']}")
    if curve:
        log(f"Training curve: {curve}")
    _write_summary(summary_path, results_before, summary)
    writer.close()
    return summary


def _read_summary(path: str) -> dict:
    """summary.json's contents; {} when it is missing or unreadable (it is only a record)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_summary(path: str, before: dict, after: dict) -> None:
    """summary.json: {"before": step-0 evals, "after": final evals and run statistics}."""
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"before": before, "after": after}, f, indent=1)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves half a summary


def _check_finite(step: int, m: dict, ckpt: checkpoint.Checkpointer, workdir: str) -> None:
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


def _print_summary(log, before: dict, after: dict, summary: dict, evals: dict) -> None:
    """The before/after table the demo ends with."""
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
