"""The GPU machine has no TensorFlow: the model, train step, decoding, predict, export and the
benchmark scripts must not need it (only the input pipeline does)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = (
    "import sys, importlib.util\n"
    "for script in ('bench_decode', 'bench_forward', 'bench_train_step', 'profile_decode'):\n"
    "    spec = importlib.util.spec_from_file_location(script, f'scripts/{script}.py')\n"
    "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
    "import pg_jax.predict, pg_jax.predict_fns, pg_jax.report, pg_jax.evaluators.anls\n"
    "import pg_jax.step, pg_jax.optim, pg_jax.sharding, pg_jax.export, pg_jax.models.loader\n"
    "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
)


BLOCKER = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'tensorflow': raise ImportError('tensorflow blocked')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_inference_modules_do_not_import_tensorflow():
    # A meta-path blocker makes any tensorflow import fail loudly, even an indirect one.
    out = _run(CHECK + "print('imported without tensorflow')\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("imported without tensorflow")


def test_the_blocker_catches_a_tensorflow_import():
    """Control: the input pipeline does need tensorflow, so the same check must fail there."""
    out = _run("import pg_jax.data.input_pipeline\n")
    assert out.returncode != 0
    assert "tensorflow blocked" in out.stderr
