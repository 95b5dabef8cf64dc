"""Runs a tiny training in a subprocess: `python train_runner.py WORKDIR DATA STEPS [KILL_AT [SIG]]`.

With KILL_AT, the process sends itself SIG (default KILL) right after starting the (async) save
of that step: a kill -9 in the middle of writing a checkpoint, a preemption's SIGTERM or a
Ctrl-C's SIGINT. It exits with the trainer's exit status. With PG_TEST_EVAL=1 in the
environment the run also evaluates held-out perplexity at the start and the end.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pg_jax import checkpoint, train


def tiny_config(data: str, steps: int):
    from configs import docvqa

    cfg = docvqa.get_config(f"mode=runlocal,res=28,text_len=16,data={data}")
    cfg.total_steps = steps
    cfg.ckpt_steps = 2
    if os.environ.get("PG_TEST_EVAL") == "1":
        cfg.evals = {"docvqa/val/pplx": dict(cfg.evals["docvqa/val/pplx"], batch_size=4)}
        cfg.eval_at_start = True
    else:
        cfg.evals = {}
    cfg.export_hf = False
    cfg.progress_bar = False
    cfg.input.batch_size = 4
    cfg.input.shuffle_buffer = 8  # shuffled, so the restored iterator position matters
    return cfg


def main():
    workdir, data, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    # SIG may end in "2": the signal is sent twice (a second Ctrl-C).
    name = sys.argv[5] if len(sys.argv) > 5 else "KILL"
    sig, times = getattr(signal, f"SIG{name.rstrip('2')}"), 2 if name.endswith("2") else 1
    if kill_at:
        save = checkpoint.Checkpointer.save
        sent = []

        def save_then_die(self, step, *a, **kw):
            started = save(self, step, *a, **kw)
            if step == kill_at and not sent:  # once: the forced save after it comes here too
                sent.append(step)
                for _ in range(times):
                    os.kill(os.getpid(), sig)
            return started

        checkpoint.Checkpointer.save = save_then_die
    result = train.train(tiny_config(data, steps), workdir)
    sys.exit(result.get("exit_code", 0))


if __name__ == "__main__":
    main()
