"""Faults a training run can hit: signals and exit codes, a rerun of a finished run, damaged
or foreign checkpoints, and config mistakes on the command line."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
RUNNER = os.path.join(HERE, "train_runner.py")


def _run(args, env=None, timeout=600):
    return subprocess.run(args, env={**ENV, **(env or {})}, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _read(path):
    with open(path) as f:
        return f.read()


def _jsonl(path):
    return [json.loads(line) for line in _read(path).splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Signals and exit codes (subprocesses: each is a real run that gets a real signal).
# ---------------------------------------------------------------------------------------------
def test_sigint_saves_exits_130_and_the_resumed_run_equals_an_uninterrupted_one(synth, tmp_path):
    data = f"{synth}/docvqa"
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    evals = {"PG_TEST_EVAL": "1"}  # perplexity at step 0 and at the end
    out = _run([sys.executable, RUNNER, a, data, "6"], evals)
    assert out.returncode == 0, out.stderr[-3000:]

    out = _run([sys.executable, RUNNER, b, data, "6", "3", "INT"], evals)
    assert out.returncode == 130, (out.returncode, out.stderr[-3000:])
    assert "SIGINT received: saving a checkpoint after this step" in out.stderr
    assert "Traceback" not in out.stderr and "KeyboardInterrupt" not in out.stderr
    assert f"Stopped by SIGINT at step 3/6: saved {b}/ckpt/3. Rerun the same command" in out.stdout
    assert not os.path.exists(os.path.join(b, "params.npz"))  # unfinished: nothing to evaluate

    out = _run([sys.executable, RUNNER, b, data, "6"], evals)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(step 3)" in _read(os.path.join(b, "train.log"))
    pa, pb = np.load(os.path.join(a, "params.npz")), np.load(os.path.join(b, "params.npz"))
    for k in pa.files:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)

    # One record per training step, and the step-0 evaluation of the interrupted process is
    # the "before" of the summary (not nan, not lost).
    steps = [r["step"] for r in _jsonl(os.path.join(b, "metrics.jsonl")) if "training_loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    sa, sb = (json.loads(_read(os.path.join(d, "summary.json"))) for d in (a, b))
    key = "docvqa/val/pplx/loss"
    assert np.isfinite(sb["before"][key]) and sb["before"][key] == sa["before"][key]
    assert sb["after"][key] == sa["after"][key]



@pytest.mark.newest_only  # signal logic only (.ci/run)
def test_a_second_sigint_exits_at_once(synth, tmp_path):
    wd = str(tmp_path / "run")
    out = _run([sys.executable, RUNNER, wd, f"{synth}/docvqa", "6", "3", "INT2"])
    assert out.returncode == 130, (out.returncode, out.stderr[-3000:])
    assert "SIGINT again: exiting now; a checkpoint still being written is abandoned" in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(os.path.join(wd, "ckpt", "3"))  # it left before saving step 3
    # A save torn by the exit is never resumed from: the same command runs to the end.
    out = _run([sys.executable, RUNNER, wd, f"{synth}/docvqa", "6"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(os.path.join(wd, "params.npz"))


def test_metrics_of_steps_after_the_resumed_checkpoint_are_dropped(tmp_path):
    """kill -9 after step 5 with the last checkpoint at 4: step 5 is trained again on resume,
    so its old record must go, or metrics.jsonl would hold step 5 twice."""
    from pg_jax import metrics

    w = metrics.MetricWriter(str(tmp_path), total_steps=6, progress_bar=False)
    w.write(0, {"val/loss": 3.0})
    for step in range(1, 6):
        w.write(step, {"training_loss": float(step)})
    w.close()
    w = metrics.MetricWriter(str(tmp_path), total_steps=6, progress_bar=False, start_step=4)
    w.write(5, {"training_loss": 50.0})
    w.close()
    records = _jsonl(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r.get("training_loss")) for r in records] == [
        (0, None), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]


# ---------------------------------------------------------------------------------------------
# Damaged and foreign checkpoints (in-process tiny runs).
# ---------------------------------------------------------------------------------------------
def _tiny(synth, steps, **overrides):
    sys.path.insert(0, HERE)
    from train_runner import tiny_config

    cfg = tiny_config(f"{synth}/docvqa", steps)
    cfg.ckpt_steps = 1
    cfg.keep_ckpts = 3
    cfg.export_npz = False
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _damage_state(step_dir):
    """Truncates the array data of a committed step (a disk that filled up, a torn copy)."""
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
             if os.path.isfile(f) and os.sep + "d" + os.sep in f]
    assert files
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(3)


@pytest.mark.newest_only  # the workdir logic only (.ci/run)
def test_rerunning_a_finished_run_keeps_its_summary(synth, tmp_path, capsys):
    from pg_jax import train

    wd = str(tmp_path / "run")
    train.train(_tiny(synth, 1), wd)
    with open(os.path.join(wd, "summary.json")) as f:
        summary = f.read()
    capsys.readouterr()
    assert train.train(_tiny(synth, 1), wd)["steps"] == 1
    assert "holds a finished run of 1 steps (summary.json); nothing to do" in capsys.readouterr().out
    assert _read(os.path.join(wd, "summary.json")) == summary


@pytest.mark.newest_only  # the workdir logic; stack 2 resumes in the SIGINT test (.ci/run)
def test_unreadable_latest_checkpoints_are_moved_aside_and_the_run_resumes(synth, tmp_path,
                                                                           capsys):
    from pg_jax import train

    wd = str(tmp_path / "run")
    train.train(_tiny(synth, 2), wd)  # steps 1 and 2 committed
    _damage_state(os.path.join(wd, "ckpt", "2"))
    os.makedirs(os.path.join(wd, "ckpt", "7"))  # an empty newer step directory
    with open(os.path.join(wd, "ckpt", "7", "junk"), "w") as f:
        f.write("x")
    capsys.readouterr()
    train.train(_tiny(synth, 3), wd)
    out = capsys.readouterr().out
    for step in (7, 2):
        assert (f"Checkpoint {wd}/ckpt/{step} is unreadable (" in out
                and f"moved it to {wd}/ckpt_unreadable/{step} and trying the step before" in out)
        assert os.path.isdir(os.path.join(wd, "ckpt_unreadable", str(step)))  # kept, not deleted
    assert "Resumed from" in out and "(step 1)" in out
    assert "Traceback" not in out


def test_no_readable_checkpoint_stops_with_one_message(synth, tmp_path):
    from pg_jax import checkpoint, train

    wd = str(tmp_path / "run")
    train.train(_tiny(synth, 1), wd)
    _damage_state(os.path.join(wd, "ckpt", "1"))
    with pytest.raises(checkpoint.CheckpointError, match=r"no readable checkpoint left in .*"
                       r"ckpt: moved .*ckpt_unreadable/1 aside"):
        train.train(_tiny(synth, 3), wd)


def test_resuming_with_another_trainable_set_names_the_config_key(synth, tmp_path):
    from configs import docvqa
    from pg_jax import checkpoint, train

    wd = str(tmp_path / "run")
    train.train(_tiny(synth, 1), wd)
    full = docvqa.get_config("mode=runlocal,freeze=full").schedule
    with pytest.raises(checkpoint.CheckpointMismatch,
                       match=r"cannot resume from .*ckpt/1: the trainable set differs "
                             r"\(config.schedule, set by the config argument freeze=\)"):
        train.train(_tiny(synth, 3, schedule=full), wd)
    assert os.path.isdir(os.path.join(wd, "ckpt", "1"))  # a mismatch is not damage: kept


def test_resuming_another_model_names_what_differs():
    from pg_jax import checkpoint

    class S:
        def __init__(self, shape):
            self.shape = shape

    saved = checkpoint.run_fingerprint({"img/pos_embedding": S((1, 4, 8)), "llm/x": S((2,))},
                                       ["llm/x"], False)
    now = checkpoint.run_fingerprint({"img/pos_embedding": S((1, 16, 8)), "llm/x": S((2,))},
                                     ["llm/x"], False)
    with pytest.raises(checkpoint.CheckpointMismatch,
                       match=r"the image resolution \(config argument res=.*differs: "
                             r"img/pos_embedding is \[1, 4, 8\] in the checkpoint and \[1, 16, 8\]"):
        checkpoint.check_same_run(saved, now, "ckpt/5")
    checkpoint.check_same_run(saved, saved, "ckpt/5")  # the same run passes


# ---------------------------------------------------------------------------------------------
# Config mistakes on the command line.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("--config.nonexistent=1", "error: unknown config key config.nonexistent\n"),
    ("--config.input.batchsize=4",
     "error: unknown config key config.input.batchsize; nearest: config.input.batch_size"),
    ("--config.lr=fast", "error: config.lr='fast': expected float\n"),
    ("--config.total_steps=x", "error: config.total_steps='x': expected int\n"),
    ("--config.freeze=full", ("error: config.freeze is not a config key but a config argument: "
                              "pass it after the file name, --config path/to/config.py:freeze=full")),
])
def test_config_override_errors_are_one_line(override, message, tmp_path):
    out = _run([sys.executable, "-m", "pg_jax.train", "--config",
                "configs/docvqa.py:data=/nonexistent", "--workdir", str(tmp_path), override])
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_user_errors_of_the_trainer_are_one_line(tmp_path):
    out = _run([sys.executable, "-m", "pg_jax.train", "--config",
                "configs/docvqa.py:ckpt=/nonexistent.npz,data=random", "--workdir", str(tmp_path)])
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "error: checkpoint /nonexistent.npz does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_step_count_is_settable_on_configs_that_count_epochs():
    """Real-run configs count epochs; --config.total_steps=N must still work and win."""
    from configs import docvqa
    from pg_jax.data import training

    code = ("import sys\nfrom absl import flags\nfrom ml_collections import config_flags\n"
            "c = config_flags.DEFINE_config_file('config', lock_config=True)\n"
            "flags.FLAGS(sys.argv)\nprint(c.value.total_steps, c.value.total_epochs)")
    out = _run([sys.executable, "-c", code, "--config", "configs/docvqa.py:data=/data/docvqa",
                "--config.total_steps=6"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["6", "3.0"]
    cfg = docvqa.get_config("data=/data/docvqa")
    cfg.total_steps = 6
    assert training.total_steps(cfg, num_examples=10_000) == 6  # steps win over epochs
    cfg.total_steps = None
    assert training.total_steps(cfg, num_examples=80) == 30  # 3 epochs of 80 at batch 8
    assert "freeze" not in cfg and "arg" not in cfg  # no leaf that would change nothing


# ---------------------------------------------------------------------------------------------
# The fit check before the first step.
# ---------------------------------------------------------------------------------------------
def test_fit_report_lists_the_changes_that_fit():
    from pg_jax import fit

    changes = fit.candidates("none", 1, "float32", batch_size=8)
    assert changes[0] == {"remat_policy": "nothing_saveable"}
    assert {"remat_policy": "nothing_saveable", "grad_accum_steps": 2} in changes
    peaks = {0: 30, 1: 20, 2: 12}  # GiB by how many changes are applied
    fits, text = fit.report(40 * 2**30, 16 * 2**30, predict=lambda c: peaks[len(c)] * 2**30,
                            changes=changes[:2])
    assert not fits
    assert "predicted peak 40.00 GiB per device of 16.00 GiB -> DOES NOT FIT" in text
    assert "--config.remat_policy=nothing_saveable: 20.00 GiB\n" in text
    assert ("--config.remat_policy=nothing_saveable --config.grad_accum_steps=2: 12.00 GiB  "
            "<- fits") in text
    assert fit.report(10 * 2**30, 16 * 2**30)[0]


def test_a_step_that_does_not_fit_stops_before_loading_weights(synth, tmp_path, monkeypatch,
                                                                 capsys):
    """CPU devices report no memory size: pretend one slightly smaller than the run needs."""
    from pg_jax import accounting, state, train

    real, limit = accounting.memory_report, []

    def small_device(compiled, device):
        text, peak, _ = real(compiled, device)
        limit.append(limit[0] if limit else int(peak * 0.99))
        return text, peak, limit[0]

    materialized = []
    monkeypatch.setattr(accounting, "memory_report", small_device)
    monkeypatch.setattr(state, "materialize", lambda *a, **k: materialized.append(1))
    with pytest.raises(ValueError, match="the train step does not fit the device"):
        train.train(_tiny(synth, 2), str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "--config.remat_policy=nothing_saveable:" in out
    assert not materialized  # no weights were loaded or initialised

    monkeypatch.setattr(accounting, "memory_report", real)
    result = train.train(_tiny(synth, 2), str(tmp_path / "dry"), dry_run=True)
    assert result["dry_run"] and not materialized
    assert not os.path.exists(str(tmp_path / "dry" / "ckpt" / "1"))
