"""Rolling training checkpoints (orbax), preemption handling and the final export.

Layout of a workdir::

    {workdir}/ckpt/{step}/state   trainable params + optimizer state (+ fp16 loss scale)
    {workdir}/ckpt/{step}/data    {"step", "iterator": DataIterator.state(), "run": fingerprint}
    {workdir}/ckpt_unreadable/    damaged steps moved aside on resume (never deleted)
    {workdir}/params.npz          merged params at the end (big_vision layout, all of them)
    {workdir}/hf/                 the same as a Hugging Face model directory

Saves are asynchronous (the arrays are copied to host before `save` returns, so the next step
may donate them) and atomic: orbax writes to a temporary directory and renames it when
complete, and `latest_step` only sees committed steps, so a save interrupted by kill -9 is
never resumed from. Frozen parameters are not saved: they are reloaded from `config.ckpt` (or
re-initialised from the seed) on resume, which is exactly what they were. Each step records
the run's fingerprint (parameter shapes, trainable set), and resume refuses a checkpoint of
another model or trainable set by naming the config key that differs.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time

import jax
import orbax.checkpoint as ocp

from pg_jax import optim


class Checkpointer:
    """Saves every `every_steps` steps, keeps the last `keep`, resumes from the newest."""

    def __init__(self, workdir: str, *, every_steps: int, keep: int, use_async: bool = True):
        """Opens (or creates) `{workdir}/ckpt`.

        Args:
          workdir: the run's directory.
          every_steps: save when step % every_steps == 0 (and when forced).
          keep: how many rolling checkpoints to keep (orbax LatestN).
          use_async: write in a background thread.
        """
        self.every_steps = every_steps
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, "ckpt")),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=use_async,
                # Temporary directories of interrupted saves are removed, never restored.
                cleanup_tmp_directories=True,
            ),
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        """The newest fully written step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: dict, data: dict, *, force: bool = False) -> bool:
        """Starts saving `state` (arrays) and `data` (JSON) at `step` if it is due.

        Returns:
          Whether a save was started.
        """
        if not force and (not self.every_steps or step % self.every_steps):
            return False
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """Reads step `step` into arrays of the given shapes, dtypes and shardings.

        Args:
          step: a committed step.
          abstract_state: ShapeDtypeStructs (with .sharding) like what was saved.

        Returns:
          (state, data).
        """
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored.state, restored.data

    def restore_latest(self, abstract_state: dict, run_info: dict, log) -> tuple[dict, dict] | None:
        """The newest readable checkpoint, after checking that it belongs to this run.

        A step that cannot be read (a file deleted or truncated inside it, an empty or junk
        step directory) is moved aside to ``{workdir}/ckpt_unreadable/`` (never deleted), with
        one line through ``log``, and the step before it is tried.

        Args:
          abstract_state: ShapeDtypeStructs (with .sharding) like what was saved.
          run_info: this run's `run_fingerprint`; a checkpoint of another model or trainable
            set is refused with the differing config key named (`CheckpointMismatch`).
          log: a function taking one line of text.

        Returns:
          (state, data) of the newest readable step, or None when there is no checkpoint.

        Raises:
          CheckpointMismatch: the newest readable checkpoint holds another model or
            trainable set.
          CheckpointError: there were checkpoints, but none could be read.
        """
        moved = []
        while (step := self.manager.latest_step()) is not None:
            try:
                data = self.manager.restore(step, args=ocp.args.Composite(
                    data=ocp.args.JsonRestore())).data
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
                moved.append(self._move_aside(step, e, log))
                continue
            if "run" in data:  # checkpoints written before the fingerprint existed lack it
                check_same_run(data["run"], run_info, self.directory(step))
            try:
                state = self.restore(step, abstract_state)[0]
            except Exception as e:  # noqa: BLE001
                moved.append(self._move_aside(step, e, log))
                continue
            return state, data
        if moved:
            raise CheckpointError(
                f"no readable checkpoint left in {self.manager.directory}: moved "
                f"{', '.join(moved)} aside. Start over with an empty --workdir, or move a "
                "step directory back if you know it is complete."
            )
        return None

    def directory(self, step: int) -> str:
        return os.path.join(str(self.manager.directory), str(step))

    def _move_aside(self, step: int, error: Exception, log) -> str:
        """Renames an unreadable step directory out of orbax's view; returns the new path."""
        src = self.directory(step)
        dst_root = os.path.join(os.path.dirname(str(self.manager.directory)), "ckpt_unreadable")
        dst = os.path.join(dst_root, str(step))
        if os.path.exists(dst):
            dst = f"{dst}.{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            os.makedirs(dst_root, exist_ok=True)
            shutil.move(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"ckpt_move_aside:{step}")
        self.manager.reload()
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        log(f"Checkpoint {src} is unreadable ({reason[:160]}); moved it to {dst} and "
            "trying the step before.")
        return dst

    def wait(self) -> None:
        """Blocks until the background save (if any) is committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class CheckpointError(ValueError):
    """A workdir's checkpoints cannot be resumed from."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint holds another model or trainable set than the config asks for."""


def run_fingerprint(param_shapes: dict, trainable, loss_scale: bool) -> dict:
    """What a checkpoint must agree with to be resumed: parameter shapes, trainable set.

    Stored beside the data position in every checkpoint; `check_same_run` compares it.
    """
    return {
        "param_shapes": {k: list(v.shape) for k, v in sorted(param_shapes.items())},
        "trainable": sorted(trainable),
        "loss_scale": bool(loss_scale),
    }


def check_same_run(saved: dict, current: dict, where: str) -> None:
    """Refuses to resume a checkpoint of another run, naming the config key that differs."""
    problems = []
    s_shapes, c_shapes = saved["param_shapes"], current["param_shapes"]
    differ = sorted(k for k in set(s_shapes) | set(c_shapes) if s_shapes.get(k) != c_shapes.get(k))
    if differ:
        k = differ[0]
        if k.startswith(("img/pos_embedding", "img/embedding")):
            key = "the image resolution (config argument res=, config.input.res)"
        elif k.startswith("llm/embedder"):
            key = "the vocabulary (config.tokenizer / the model's vocab_size)"
        else:
            key = "the model (config.model_init, or config.model_name when there is no checkpoint)"
        problems.append(
            f"{key} differs: {k} is {s_shapes.get(k, 'absent')} in the checkpoint and "
            f"{c_shapes.get(k, 'absent')} now ({len(differ)} parameter(s) differ)"
        )
    if saved["trainable"] != current["trainable"]:
        only_saved = sorted(set(saved["trainable"]) - set(current["trainable"]))
        only_now = sorted(set(current["trainable"]) - set(saved["trainable"]))
        problems.append(
            "the trainable set differs (config.schedule, set by the config argument freeze=): "
            f"trained in the checkpoint only: {only_saved[:3] or 'none'}"
            f"{' ...' if len(only_saved) > 3 else ''}; trained now only: {only_now[:3] or 'none'}"
            f"{' ...' if len(only_now) > 3 else ''}"
        )
    if saved["loss_scale"] != current["loss_scale"]:
        problems.append(
            "dynamic loss scaling differs (config.dtype / config.loss_scale): "
            f"{'on' if saved['loss_scale'] else 'off'} in the checkpoint, "
            f"{'on' if current['loss_scale'] else 'off'} now"
        )
    if problems:
        raise CheckpointMismatch(
            f"cannot resume from {where}: " + "; ".join(problems)
            + ". Use the config the run was started with, or a new --workdir."
        )


def savable(train_state: dict, trainable: tuple[str, ...]) -> dict:
    """What goes into a checkpoint: trainable params (flat), optimizer state, loss scale."""
    out = {
        "params": optim.split(train_state["params"], trainable)[0],
        "opt": train_state["opt"],
    }
    if "loss_scale" in train_state:
        out["loss_scale"] = train_state["loss_scale"]
    return out


def abstract(tree):
    """ShapeDtypeStructs with the shardings of a tree of jax.Arrays (a restore target)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )


def restore_into(train_state: dict, saved: dict, trainable: tuple[str, ...]) -> dict:
    """Puts restored trainable params/opt state into a train state whose frozen part is loaded."""
    frozen = optim.split(train_state["params"], trainable)[1]
    out = dict(train_state, params=optim.merge(saved["params"], frozen), opt=saved["opt"])
    if "loss_scale" in saved:
        out["loss_scale"] = saved["loss_scale"]
    return out


class Preemption:
    """Turns SIGTERM (Kaggle, TPU/spot preemption) and SIGINT (Ctrl-C) into a flag.

    The train loop polls the flag, saves a checkpoint and returns instead of dying mid-step; the
    trainer then exits with `exit_code` (128 + the signal: 130 for SIGINT, 143 for SIGTERM), so
    that ``train && evaluate`` stops. A second signal exits at once (code 128 + signal; the
    last committed checkpoint stays). Only the main thread may install signal handlers;
    elsewhere (some test runners) the flag just never sets.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def _handle(self, signum, frame):
        del frame
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\n{name} again: exiting now; a checkpoint still being written is abandoned "
                  "(committed ones stay).", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"\n{name} received: saving a checkpoint after this step, then exiting "
            f"({name} again to exit at once).",
            file=sys.stderr,
            flush=True,
        )

    def restore_handler(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
