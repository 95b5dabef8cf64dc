"""The GPU machine has no TensorFlow: the model, train step, decoding, predict, export, the
preprocessed-arrays data source and the benchmark scripts must not need it (only the input
pipeline does). Training from an arrays file with TensorFlow blocked:
tests/test_preprocessed_arrays.py."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = (
    "import sys, importlib.util\n"
    "sys.path.insert(0, 'scripts')  # as when run: a script's directory is on its path\n"
    "for script in ('bench_decode', 'bench_forward', 'bench_train_step', 'bench_train',\n"
    "               'bench_train_levers', 'profile_decode', 'make_demo_checkpoint',\n"
    "               'bench_fp8_matmul', 'bench_few_rows'):\n"
    "    spec = importlib.util.spec_from_file_location(script, f'scripts/{script}.py')\n"
    "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
    "import pg_jax.predict, pg_jax.predict_fns, pg_jax.report, pg_jax.evaluators.anls\n"
    "import pg_jax.step, pg_jax.optim, pg_jax.sharding, pg_jax.export, pg_jax.models.loader\n"
    "import pg_jax.data.preprocessed_arrays, pg_jax.data.training\n"
    "assert sys.modules['tensorflow'] is None, 'tensorflow was imported'\n"
)


# As if TensorFlow were not installed: `import tensorflow` (even an indirect one) fails, and
# `importlib.util.find_spec("tensorflow")`, which libraries such as etils use to decide whether
# to use it, answers None.
BLOCKER = "import sys\nsys.modules['tensorflow'] = None\n"
BLOCKED = "import of tensorflow halted"


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_inference_modules_do_not_import_tensorflow():
    out = _run(CHECK + "print('imported without tensorflow')\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("imported without tensorflow")


def test_the_blocker_catches_a_tensorflow_import():
    """Control: the input pipeline does need tensorflow, so the same check must fail there."""
    out = _run("import pg_jax.data.input_pipeline\n")
    assert out.returncode != 0
    assert BLOCKED in out.stderr


def test_trainer_runs_on_random_data_without_tensorflow(tmp_path):
    """``data=random`` is how the trainer is measured on the GPU machine: no files, no TF."""
    code = (
        "import sys\n"
        "from configs import docvqa\n"
        "from pg_jax import train\n"
        "c = docvqa.get_config('data=random,variant=tiny_pg1,res=56,text_len=8')\n"
        "c.unlock()\n"
        "c.total_steps, c.log_training_steps, c.progress_bar = 4, 2, False\n"
        "c.input.batch_size = 2\n"
        f"out = train.train(c, {str(tmp_path)!r})\n"
        "assert sys.modules['tensorflow'] is None, 'tensorflow was imported'\n"
        "print('steps', out['steps'])\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("steps 4")
    log = (tmp_path / "train.log").read_text()
    # One progress line per log interval, with the examples/s the benchmark reports.
    assert "step 2/4: loss" in log and "step 4/4: loss" in log
    assert "examples/s" in log
    assert not (tmp_path / "params.npz").exists()  # benchmarking runs export nothing
