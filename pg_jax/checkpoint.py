"""Rolling training checkpoints (orbax), preemption handling and the final export.

Layout of a workdir::

    {workdir}/ckpt/{step}/state   trainable params + optimizer state (+ fp16 loss scale)
    {workdir}/ckpt/{step}/data    {"step", "iterator": DataIterator.state()} as JSON
    {workdir}/params.npz          merged params at the end (big_vision layout, all of them)
    {workdir}/hf/                 the same as a Hugging Face model directory

Saves are asynchronous (the arrays are copied to host before `save` returns, so the next step
may donate them) and atomic: orbax writes to a temporary directory and renames it when
complete, and `latest_step` only sees committed steps, so a save interrupted by kill -9 is
never resumed from. Frozen parameters are not saved: they are reloaded from `config.ckpt` (or
re-initialised from the seed) on resume, which is exactly what they were.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

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

    def wait(self) -> None:
        """Blocks until the background save (if any) is committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
    """Turns SIGTERM (Kaggle, TPU/spot preemption) into a flag the train loop polls.

    The loop then saves a checkpoint and exits cleanly instead of dying mid-step. Only the main
    thread may install signal handlers; elsewhere (some test runners) the flag just never sets.
    """

    def __init__(self):
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        else:
            self._previous = None

    def _handle(self, signum, frame):
        del frame
        logging.getLogger(__name__).warning(
            "Signal %d received: saving a checkpoint after this step, then exiting.",
            signum,
        )
        self.requested = True

    def restore_handler(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
