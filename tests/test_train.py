"""End-to-end: the CLI smoke run and resume, kill -9 + resume == uninterrupted, NaN stop."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")


def _read(path):
    with open(path) as f:
        return f.read()


def _run(args, timeout=600):
    return subprocess.run(
        args,
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.newest_only  # on the Kaggle stack the SIGINT test resumes, the notebook test trains
def test_cli_two_steps_then_resume(synth, tmp_path):
    wd = str(tmp_path / "run")
    config = f"configs/docvqa.py:mode=runlocal,res=28,text_len=16,data={synth}/docvqa"
    cmd = [sys.executable, "-m", "pg_jax.train", "--config", config, "--workdir", wd]
    out = _run(cmd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in (
        "params.npz",
        "hf/config.json",
        "hf/model.safetensors",
        "metrics.jsonl",
        "config.json",
        "summary.json",
        "train.log",
        "training_curve.png",
    ):
        assert os.path.exists(os.path.join(wd, name)), name
    assert os.listdir(os.path.join(wd, "tb"))
    records = [json.loads(line) for line in _read(os.path.join(wd, "metrics.jsonl")).splitlines()]
    train_rec = [r for r in records if "training_loss" in r]
    assert [r["step"] for r in train_rec] == [1, 2]
    for key in ("l2_grads", "l2_params", "l2_updates", "lr", "examples/s", "tokens/s"):
        assert key in train_rec[-1], key
    assert any("docvqa/val/pplx/loss" in r for r in records)

    out = _run(cmd + ["--config.total_steps=4"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = _read(os.path.join(wd, "train.log"))
    assert "Resumed from" in log and "(step 2)" in log

    import pg_jax

    model, _params = pg_jax.load(os.path.join(wd, "params.npz"))
    assert model.img["image_size"] == 28


@pytest.mark.slow
def test_kill9_mid_save_then_resume_equals_uninterrupted(synth, tmp_path):
    runner = os.path.join(HERE, "train_runner.py")
    data = f"{synth}/docvqa"
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    out = _run([sys.executable, runner, a, data, "6"])
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run([sys.executable, runner, b, data, "6", "4"])
    assert out.returncode == -9, (out.returncode, out.stderr[-3000:])
    out = _run([sys.executable, runner, b, data, "6"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Resumed from" in _read(os.path.join(b, "train.log"))
    pa, pb = (
        np.load(os.path.join(a, "params.npz")),
        np.load(os.path.join(b, "params.npz")),
    )
    assert sorted(pa.files) == sorted(pb.files)
    for k in pa.files:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_nan_stops_naming_the_step(synth, tmp_path):
    sys.path.insert(0, HERE)
    from train_runner import tiny_config

    from pg_jax import train

    cfg = tiny_config(f"{synth}/docvqa", 6)
    cfg.lr = 1e38  # the first update overflows the parameters
    cfg.grad_clip_norm = 0.0
    with pytest.raises(FloatingPointError, match=r"step \d+: non-finite"):
        train.train(cfg, str(tmp_path / "nan"))


def test_raw_source_is_prepared_once_into_cache_dir(tiny_json, tmp_path):
    """`cache_dir=` turns a raw DocVQA release into a prepared cache on first use, reuses it with
    the same options and refuses to mix other options into it."""
    import ml_collections

    from pg_jax.data import training

    cache = str(tmp_path / "cache")
    config = ml_collections.ConfigDict({"input": {"cache_dir": cache, "res": 28}})
    spec = {"name": "docvqa_json", "path": tiny_json, "split": "train"}
    out = training.prepared(spec, config)
    assert out == {"name": "docvqa_prepared", "path": cache}
    with open(os.path.join(cache, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["counts"]["kept"] == 2  # the two good records of the fixture
    mtime = os.path.getmtime(os.path.join(cache, "manifest.json"))
    assert training.prepared(spec, config) == out  # reused, not rebuilt
    assert os.path.getmtime(os.path.join(cache, "manifest.json")) == mtime
    config.input.res = 56
    with pytest.raises(Exception, match="res"):
        training.prepared(spec, config)
    config.input.cache_dir = ""
    assert training.prepared(spec, config) == spec  # no cache: the raw source


@pytest.mark.newest_only  # the SIGINT test's path (.ci/run)
def test_sigterm_saves_and_exits_cleanly_then_resumes(synth, tmp_path):
    """Kaggle and TPU preemption send SIGTERM: the run saves the step it is at, exits 143 (so
    that `train && evaluate` stops), and the same command resumes from there to the end."""
    runner = os.path.join(HERE, "train_runner.py")
    data, wd = f"{synth}/docvqa", str(tmp_path / "run")
    out = _run([sys.executable, runner, wd, data, "6", "3", "TERM"])
    assert out.returncode == 143, (out.returncode, out.stderr[-3000:])
    log = _read(os.path.join(wd, "train.log"))
    assert f"Stopped by SIGTERM at step 3/6: saved {wd}/ckpt/3" in log
    assert not os.path.exists(os.path.join(wd, "params.npz"))  # not finished yet
    assert "3" in os.listdir(os.path.join(wd, "ckpt"))
    out = _run([sys.executable, runner, wd, data, "6"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(step 3)" in _read(os.path.join(wd, "train.log"))
    assert os.path.exists(os.path.join(wd, "params.npz"))


@pytest.mark.newest_only  # the notebook test repeats it (.ci/run)
def test_shortened_demo_fine_tunes_the_shipped_checkpoint(tmp_path):
    """The embedded default, shortened (2 steps, 16 held-out questions, 30 synthetic pages):
    it generates its set, fine-tunes the shipped checkpoint's attention only, and writes the
    evaluation report with page thumbnails and the training curve."""
    wd = str(tmp_path / "demo")
    env = dict(ENV, PG_JAX_CACHE=str(tmp_path / "cache"))
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # the project quiets TensorFlow by itself
    config = "configs/docvqa.py:mode=runlocal,synthetic_pages=30"
    out = subprocess.run(
        [sys.executable, "-m", "pg_jax.train", "--config", config, "--workdir", wd,
         "--config.export_hf=false"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Generating the synthetic DocVQA set (demo, 30 train pages)" in out.stdout
    assert "demo_tiny_pg1_112.npz" in _read(os.path.join(wd, "train.log"))
    assert "oneDNN" not in out.stderr and "absl::InitializeLog" not in out.stderr
    with open(os.path.join(wd, "docvqa_val.html")) as f:
        assert "<img" in f.read()
    assert os.path.getsize(os.path.join(wd, "training_curve.png")) > 0
    # Attention-only: the exported weights differ from the shipped ones exactly there.
    import pg_jax
    from configs import docvqa
    from pg_jax import optim

    _, before = pg_jax.load(docvqa.DEMO_CHECKPOINT)
    _, after = pg_jax.load(os.path.join(wd, "params.npz"))
    before, after = optim.flatten(before), optim.flatten(after)
    changed = {k for k in before if not np.array_equal(
        np.asarray(before[k], np.float32), np.asarray(after[k], np.float32))}
    assert changed and all(k.startswith("llm/layers/attn/") for k in changed), sorted(changed)
