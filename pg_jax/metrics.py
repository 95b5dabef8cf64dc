"""Where measurements go: stdout (with a progress bar), JSONL, TensorBoard events, a PNG curve.

    writer = MetricWriter(workdir, total_steps=1000, progress_bar=True)
    writer.log("a line of text")                 # stdout + {workdir}/train.log
    writer.write(step, {"training_loss": 1.2})   # {workdir}/metrics.jsonl + TensorBoard
    writer.plot()                                # {workdir}/training_curve.png

TensorBoard events go through ``tf.summary`` when TensorFlow is importable (the GPU machines may
lack it; then only JSONL is written). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax


class MetricWriter:
    """Writes measurements of one run. Pass it explicitly; there is no global writer."""

    def __init__(self, workdir: str, *, total_steps: int, progress_bar: bool, start_step: int = 0):
        """Opens the outputs (appending: a resumed run continues the same files).

        Args:
          workdir: the run's directory.
          total_steps: for the progress bar's ETA.
          progress_bar: show a tqdm bar on stderr.
          start_step: first step of this process (resume).
        """
        self.workdir = workdir
        self.main = jax.process_index() == 0
        # Kept open for the whole run (closed in close()), appending so a resume continues them.
        self._jsonl = self._logf = None
        if self.main:
            jsonl = os.path.join(workdir, "metrics.jsonl")
            if os.path.exists(jsonl):
                # Steps after the resumed checkpoint were computed by the interrupted process
                # and will be computed again: drop them so that no step appears twice.
                kept = [r for r in read_jsonl(jsonl) if r["step"] <= start_step]
                with open(f"{jsonl}.tmp", "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in kept)
                os.replace(f"{jsonl}.tmp", jsonl)
            self._jsonl = open(jsonl, "a")  # noqa: SIM115
            self._logf = open(os.path.join(workdir, "train.log"), "a")  # noqa: SIM115
        # The bar starts with the first step, after the start-up log.
        self._bar, self._bar_args = (
            None,
            (progress_bar and self.main, total_steps, start_step),
        )
        self._tb = None
        if self.main:
            try:  # TensorBoard events are optional (no TensorFlow on some GPU images).
                import tensorflow as tf
                from tensorflow.core.framework import summary_pb2

                self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))
                # What tensorboard's scalar() writes, without needing the tensorboard package.
                self._scalar_meta = summary_pb2.SummaryMetadata(
                    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
                )
            except ImportError:
                self.log("TensorFlow not installed: metrics go to metrics.jsonl only.")

    def log(self, text: str) -> None:
        """Prints a line (above the progress bar) and appends it to train.log."""
        if not self.main:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)
        self._logf.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self._logf.flush()

    def write(self, step: int, values: dict) -> None:
        """Records scalar measurements at `step`."""
        if not self.main:
            return
        values = {k: float(v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=step):
                for k, v in values.items():
                    tf.summary.write(k, tf.constant(v, tf.float32), metadata=self._scalar_meta)
            self._tb.flush()

    def progress(
        self, step: int, loss: float, examples_per_s: float, mfu: float | None = None,
        peak_memory_gib: float | None = None,
    ) -> None:
        """Advances the bar to `step`, showing loss, examples/s, MFU and the devices' measured
        peak memory where known (tqdm adds the ETA)."""
        show, total, start = self._bar_args
        if show and self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=start,
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )
        if self._bar is not None:
            shown = {"loss": f"{loss:.4f}", "ex_s": f"{examples_per_s:.1f}"}
            if mfu is not None:
                shown["mfu"] = f"{mfu:.1%}"
            if peak_memory_gib is not None:
                shown["peak"] = f"{peak_memory_gib:.1f}GiB"
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(step - self._bar.n)

    def end_progress(self) -> None:
        """Closes the progress bar so that the closing lines print cleanly."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._bar_args = (False, 0, 0)

    def close(self) -> None:
        self.end_progress()
        for f in (self._jsonl, self._logf):
            if f is not None:
                f.close()


def read_jsonl(path: str) -> list[dict]:
    """All records of a metrics.jsonl, in the order written."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot(workdir: str, keys: list[str]) -> str | None:
    """Draws training_loss and the given eval metrics against step into training_curve.png.

    Returns:
      The PNG path, or None when there is nothing to plot or matplotlib is missing.
    """
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    series = {k: {} for k in keys}
    for r in records:
        for k in keys:
            if k in r and math.isfinite(r[k]):
                series[k][r["step"]] = r[k]  # last write of a step wins (resume)
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.5), squeeze=False)
    for ax, (k, v) in zip(axes[0], series.items()):
        steps = sorted(v)
        ax.plot(steps, [v[s] for s in steps], marker="." if len(steps) < 30 else None)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(workdir, "training_curve.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
