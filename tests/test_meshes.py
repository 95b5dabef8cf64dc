"""The meshes the notebook gets on Kaggle (2x T4: 2 devices; TPU v5e-8: 8) through the trainer
and its ANLS evaluator, with sharding=replicate and fsdp: the same losses, metrics and answers as
one device, and the weights split over the mesh only under fsdp. One subprocess per mesh, with
fake CPU devices, runs both strategies."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import mesh_check

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def one_device(ckpt, synth, tmp_path_factory):
    inputs = (ckpt, os.path.join(synth, "docvqa"))
    return inputs, mesh_check.run(*inputs, str(tmp_path_factory.mktemp("one")), "replicate")


# 2 devices: Kaggle's 2x T4, on the GPU image's stack too; 8 (TPU v5e-8, whose image is not that
# stack): on the newest releases only (.ci/run).
@pytest.mark.parametrize("devices", [2, pytest.param(8, marks=pytest.mark.newest_only)])
def test_notebook_meshes_match_one_device(devices, one_device, tmp_path):
    inputs, ref = one_device
    assert ref["devices"] == 1 and ref["split_leaves"] == 0 and len(ref["losses"]) == 2
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(HERE, "mesh_check.py"), *inputs,
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr[-4000:]
    results = {r["strategy"]: r for r in (json.loads(line.split(" ", 1)[1])
                                          for line in out.stdout.splitlines()
                                          if line.startswith("MESH_RESULT "))}
    assert set(results) == set(mesh_check.STRATEGIES), text[-6000:]
    for strategy, got in results.items():
        assert got["devices"] == devices
        np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-4, err_msg=strategy)
        assert got["num"] == ref["num"] == 8
        assert got["answers"] == {str(k): v for k, v in ref["answers"].items()}, strategy
        assert got["anls"] == pytest.approx(ref["anls"], abs=1e-6)
    assert results["replicate"]["split_leaves"] == 0
    # fsdp: the weights and their Adam moments are split over the devices, not copied.
    assert results["fsdp"]["split_leaves"] > 20, results["fsdp"]["split_leaves"]
