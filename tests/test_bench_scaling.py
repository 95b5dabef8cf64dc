"""scripts/bench_scaling.py: reading a trainer run's figures, and the script end to end on fake
CPU devices."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_scaling


def test_read_run_leaves_out_the_compiling_interval(tmp_path):
    # Three log intervals of 10, 10 and 5 steps; the first (with the compile) is slow.
    records = [
        {"step": 10, "training_loss": 3.0, "examples/s": 1.0, "step_time_s": 8.0, "mfu": 0.01},
        {"step": 15, "lr": 1e-3},  # not a training record
        {"step": 20, "training_loss": 2.0, "examples/s": 40.0, "step_time_s": 0.2, "mfu": 0.4,
         "peak_memory_gib": 3.0},
        {"step": 25, "training_loss": 1.5, "examples/s": 20.0, "step_time_s": 0.4, "mfu": 0.2,
         "peak_memory_gib": 3.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "train.log").write_text(
        "step 20/25: loss 2.0000, 40.0 examples/s (2 x NVIDIA H200)\n"
        "step 25/25: loss 1.5000, 20.0 examples/s, peak 3.5 GiB (2 x NVIDIA H200)\n")
    r = bench_scaling.read_run(str(tmp_path))
    # 10 steps x 0.2 s at 40/s (80 examples) and 5 x 0.4 s at 20/s (40): 120 examples in 4 s.
    assert r["examples/s"] == pytest.approx(30.0)
    assert r["timed_steps"] == 15
    assert r["mfu"] == pytest.approx(0.3)
    assert r["peak_memory_gib"] == 3.5
    assert (r["devices"], r["device_kind"]) == (2, "NVIDIA H200")
    assert r["losses"] == [3.0, 2.0, 1.5]


@pytest.mark.newest_only  # subprocess runs of the trainer, which other tests run on every stack
def test_script_runs_the_trainer_on_each_device_count(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench_scaling.py"), "--platform", "cpu",
         "--variant", "tiny_pg1", "--res", "28", "--text_len", "8", "--batch_per_device", "4",
         "--devices", "1", "2", "--sharding", "fsdp", "--steps", "4", "--log_every", "2",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    # Each run saw the devices it was given, and took N x 4 rows a step.
    assert [(r["n"], r["devices"]) for r in results] == [(1, 1), (2, 2)]
    assert all(r["timed_steps"] == 2 and r["examples/s"] > 0 for r in results)
    # Weak scaling: the 2-device run's global batch holds other rows, so another loss.
    assert results[0]["losses"][0] != results[1]["losses"][0]
    assert "| 2 | fsdp | 1 |" in proc.stdout
