"""Mesh and sharding rules; sharded train steps and decoding equal one device (subprocesses
with fake CPU devices)."""

import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec

from pg_jax import sharding

HERE = os.path.dirname(os.path.abspath(__file__))


def test_fsdp_rule_shards_largest_divisible_dim():
    mesh = sharding.make_mesh([("data", -1)])
    tree = {
        "big": jax.ShapeDtypeStruct((6, 1024, 2048), "float32"),
        "small": jax.ShapeDtypeStruct((3,), "float32"),
    }
    sh = sharding.infer_sharding(tree, [(".*", 'fsdp(axis="data")')], mesh)
    n = jax.device_count()
    assert sh["small"].spec == PartitionSpec()
    assert sh["big"].spec == (PartitionSpec(None, None, "data") if n > 1 else PartitionSpec())


def test_bad_rules_and_meshes():
    with pytest.raises(ValueError, match="unknown rule"):
        sharding.infer_sharding(
            {"a": jax.ShapeDtypeStruct((2,), "float32")},
            [(".*", "tp()")],
            sharding.make_mesh([("data", -1)]),
        )
    with pytest.raises(ValueError, match="does not fit"):
        sharding.make_mesh([("data", 3 * jax.device_count() + 1)])


def _run_on_fake_devices(script: str, devices: int) -> str:
    """Runs tests/<script> in a fresh process that sees `devices` CPU devices; its output."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return out.stdout + out.stderr[-4000:]


def test_sharded_step_equals_single_device():
    out = _run_on_fake_devices("sharded_step_check.py", 8)
    assert "SHARDED_OK" in out, out[-6000:]


def test_decode_with_params_on_a_mesh_equals_one_device():
    out = _run_on_fake_devices("sharded_decode_check.py", 4)
    assert "SHARDED_DECODE_OK" in out, out[-6000:]


def test_pallas_kernels_run_on_each_devices_rows():
    out = _run_on_fake_devices("sharded_kernels_check.py", 4)
    assert "SHARDED_KERNELS_OK" in out, out[-6000:]
