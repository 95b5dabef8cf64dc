"""Two processes on this machine act as two hosts (gloo collectives on CPU)."""

import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.newest_only  # two hosts; Kaggle runs one (.ci/run)
def test_two_processes_decode_and_train(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.path.dirname(HERE),
    )
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multiprocess_check.py"), str(i), port,
             str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for i, out in enumerate(outs):
        assert f"MULTIPROCESS_OK {i}" in out, out[-4000:]
    # Both strategies train on the same global batches from the same init: same losses.
    lines = _losses(outs[0])
    assert lines["replicate"] == lines["fsdp"] or _close(lines["replicate"], lines["fsdp"])
    # One process on 4 devices, the same global batches: the two-host run's losses.
    single = subprocess.run(
        [sys.executable, os.path.join(HERE, "multiprocess_check.py"), "single",
         str(tmp_path / "single")],
        env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        capture_output=True, text=True, timeout=600, check=False)
    assert "SINGLE_OK" in single.stdout, (single.stdout + single.stderr)[-4000:]
    one = _losses(single.stdout)["replicate"]
    assert one == lines["replicate"] or _close(one, lines["replicate"]), (one, lines)


def _losses(out: str) -> dict[str, str]:
    return dict(line.split(" ", 2)[1:] for line in out.splitlines() if line.startswith("LOSSES "))


def _close(a: str, b: str) -> bool:
    import ast

    import numpy as np

    return np.allclose(ast.literal_eval(a), ast.literal_eval(b), rtol=1e-4)
