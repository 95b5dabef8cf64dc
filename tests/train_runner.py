"""Runs a tiny training in a subprocess: `python train_runner.py WORKDIR DATA STEPS [KILL_AT [SIG]]`.

With KILL_AT, the process sends itself SIG (default KILL) right after starting the (async) save
of that step: a kill -9 in the middle of writing a checkpoint, or a preemption's SIGTERM.
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
    cfg.evals = {}
    cfg.export_hf = False
    cfg.progress_bar = False
    cfg.input.batch_size = 4
    cfg.input.shuffle_buffer = 8  # shuffled, so the restored iterator position matters
    return cfg


def main():
    workdir, data, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    sig = getattr(signal, f"SIG{sys.argv[5]}") if len(sys.argv) > 5 else signal.SIGKILL
    if kill_at:
        save = checkpoint.Checkpointer.save

        def save_then_die(self, step, *a, **kw):
            started = save(self, step, *a, **kw)
            if step == kill_at:
                os.kill(os.getpid(), sig)
            return started

        checkpoint.Checkpointer.save = save_then_die
    train.train(tiny_config(data, steps), workdir)


if __name__ == "__main__":
    main()
