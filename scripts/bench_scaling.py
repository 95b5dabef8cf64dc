"""Scaling of the trainer itself (not the benchmark step) over 1..N devices of one host.

    PYTHONPATH=. python3 scripts/bench_scaling.py --variant pg1_3b --res 224 --batch_per_device 32 \
        --devices 1 2 --sharding replicate fsdp --steps 30

Each run is ``python -m pg_jax.train`` on random batches (``data=random``: no dataset, no
TensorFlow) in its own subprocess, with the first N GPUs visible (``CUDA_VISIBLE_DEVICES``), the
global batch N x ``--batch_per_device`` (weak scaling: each device keeps its batch) and the frozen
weights and attention chosen by ``--set`` config overrides. ``--processes`` runs each N-device
case as N processes of one device each, joined by ``jax.distributed`` through the trainer's
``JAX_COORDINATOR_ADDRESS`` variables, as on a multi-host pod. ``--platform cpu`` fakes the
devices on the CPU (``--xla_force_host_platform_device_count``): figures meaningless, for
checking the script.

Read from each run's ``metrics.jsonl``: examples/s over the log intervals after the first (which
holds the compile), MFU, and the largest measured peak device memory of its devices
(``peak_bytes_in_use``); the device count and kind from its ``train.log``. Printed as one table:
speed-up and scaling efficiency against the same sharding on the fewest devices, and the first
logged losses (a run of N devices in one process and the same in N processes take the same
global batches, so their losses agree).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICES_LINE = re.compile(r"\((\d+) x ([^)]+)\)\s*$")


def trainer_command(a: argparse.Namespace, n: int, sharding: str, workdir: str) -> list[str]:
    config = (f"configs/docvqa.py:data=random,variant={a.variant},res={a.res},"
              f"text_len={a.text_len},sharding={sharding}")
    return [sys.executable, "-m", "pg_jax.train", "--config", config, "--workdir", workdir,
            f"--config.input.batch_size={n * a.batch_per_device}",
            f"--config.total_steps={a.steps}", f"--config.log_training_steps={a.log_every}",
            "--config.progress_bar=False", "--config.ckpt_steps=0",
            *[f"--config.{s}" for s in a.set]]


def device_env(a: argparse.Namespace, devices: list[int]) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if a.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + f" --xla_force_host_platform_device_count={len(devices)}")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_case(a: argparse.Namespace, n: int, sharding: str, workdir: str) -> dict:
    """One trainer run on n devices; its figures, or an ``error`` with the log's tail."""
    cmd = trainer_command(a, n, sharding, workdir)
    if a.processes and n > 1:
        port = str(_free_port())
        procs = []
        for i in range(n):
            env = device_env(a, [i])
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(n),
                       JAX_PROCESS_ID=str(i))
            if a.platform == "cpu":  # CPU devices of several processes talk through gloo
                env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        try:
            outputs = [p.communicate(timeout=a.timeout)[0] for p in procs]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            return {"error": f"ran past --timeout {a.timeout:g} s"}
        returncode = max(p.returncode for p in procs)
        output = outputs[0]
    else:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=device_env(a, list(range(n))),
                                  capture_output=True, text=True, timeout=a.timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"ran past --timeout {a.timeout:g} s"}
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    if returncode != 0:
        return {"error": f"exit {returncode}: " + output[-1500:]}
    return read_run(workdir)


def read_run(workdir: str) -> dict:
    """A finished run's throughput, MFU, peak memory and devices, from its workdir."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if "training_loss" in r and "examples/s" in r]
    if len(train) < 2:
        raise ValueError(f"{workdir}: {len(train)} logged intervals; need 2 (the first compiles)")
    timed = train[1:]
    seconds = sum(r["step_time_s"] * _steps(train, r) for r in timed)
    steps = sum(_steps(train, r) for r in timed)
    ex_s = sum(r["examples/s"] * r["step_time_s"] * _steps(train, r) for r in timed) / seconds
    with open(os.path.join(workdir, "train.log")) as f:
        found = [m for m in map(_DEVICES_LINE.search, f.read().splitlines()) if m]
    out = {"examples/s": ex_s, "timed_steps": steps, "losses": [r["training_loss"] for r in train],
           "devices": int(found[-1].group(1)) if found else None,
           "device_kind": found[-1].group(2) if found else None}
    if "mfu" in timed[-1]:
        out["mfu"] = sum(r["mfu"] for r in timed) / len(timed)
    if "peak_memory_gib" in train[-1]:
        out["peak_memory_gib"] = train[-1]["peak_memory_gib"]
    return out


def _steps(train: list[dict], record: dict) -> int:
    """Steps in the log interval that ends at ``record``."""
    i = train.index(record)
    return record["step"] - (train[i - 1]["step"] if i else 0)


def table(results: list[dict]) -> str:
    """Markdown: one row per run, speed-up against the same sharding on the fewest devices."""
    header = ("| devices | sharding | processes | examples/s | speed-up | efficiency | MFU | "
              "peak GiB/device | first logged losses |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for r in sorted(results, key=lambda r: (r["sharding"], r["n"])):
        if "error" in r:
            lines.append(f"| {r['n']} | {r['sharding']} | {r['processes']} | failed | | | | | |")
            continue
        b = base.setdefault(r["sharding"], r)
        speedup = r["examples/s"] / b["examples/s"]
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        peak = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-"
        lines.append(f"| {r['n']} | {r['sharding']} | {r['processes']} | {r['examples/s']:.1f} | "
                     f"{speedup:.2f}x | {speedup * b['n'] / r['n']:.0%} | {mfu} | {peak} | "
                     + ", ".join(f"{x:.4f}" for x in r["losses"][:3]) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="pg1_3b")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--text_len", type=int, default=32)
    p.add_argument("--batch_per_device", type=int, default=32)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sharding", nargs="+", default=["replicate", "fsdp"],
                   choices=["replicate", "fsdp"])
    p.add_argument("--processes", action="store_true",
                   help="one process per device (jax.distributed) instead of one per run")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log_every", type=int, default=10, help="steps per logged interval")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="trainer config overrides, e.g. frozen_dtype=float8")
    p.add_argument("--platform", default="gpu", choices=["gpu", "cpu"])
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--workdir", default="", help="keep each run's workdir under this folder")
    p.add_argument("--out", default="", help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.steps < 2 * a.log_every:  # the first logged interval holds the compile, so is not timed
        p.error(f"--steps {a.steps} gives fewer than two logged intervals of --log_every "
                f"{a.log_every}: use --steps {2 * a.log_every} or more")

    root = a.workdir or tempfile.mkdtemp(prefix="pg_jax_scaling_")
    results = []
    for sharding in a.sharding:
        for n in a.devices:
            workdir = os.path.join(root, f"{sharding}_{n}{'p' if a.processes else ''}")
            shutil.rmtree(workdir, ignore_errors=True)
            t0 = time.time()
            r = {"n": n, "sharding": sharding, "processes": n if a.processes else 1,
                 **run_case(a, n, sharding, workdir)}
            r["wall_s"] = round(time.time() - t0, 1)
            if "error" not in r and r["devices"] != n:
                r = {**r, "error": f"the run saw {r['devices']} devices, not {n}"}
            results.append(r)
            print(f"{sharding} on {n}: "
                  + (r["error"] if "error" in r else
                     f"{r['examples/s']:.1f} examples/s ({r['device_kind']}, {r['wall_s']} s)"),
                  flush=True)
    print(table(results))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    if not a.workdir:
        shutil.rmtree(root, ignore_errors=True)
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
