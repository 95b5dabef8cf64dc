"""One of two processes (2 fake CPU devices each, gloo collectives) of a multi-host run.

    python tests/multiprocess_check.py PROCESS_ID PORT WORKDIR
    python tests/multiprocess_check.py single WORKDIR   # one process, 4 fake CPU devices

Checks what only several processes exercise: (1) decoding with params that span both processes,
each process passing its own rows (`predict_fns.place_batch`), returns each process the tokens a
single device gives for those rows; (2) the trainer runs on random batches end to end (global
batches, metrics, the checkpoint, the final gather of host-sharded params) and both processes see
the same loss, the loss one process on as many devices gives for the same global batches.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_threefry_partitionable", True)


def train_runs(workdir, pid, strategies):
    """The trainer on random batches (8 rows a step) with each sharding strategy; process 0
    prints each run's losses."""
    import numpy as np

    from configs import docvqa
    from pg_jax import metrics, train

    for strategy in strategies:
        c = docvqa.get_config(f"data=random,variant=tiny_pg1,res=28,text_len=8,sharding={strategy}")
        c.unlock()
        c.total_steps, c.log_training_steps, c.progress_bar = 3, 1, False
        c.input.batch_size = 8  # global: 4 rows per process on two
        c.export_npz = True  # exercises the cross-process gather before writing
        run_dir = os.path.join(workdir, strategy)
        out = train.train(c, run_dir)
        assert out["steps"] == 3, out
        if pid == 0:
            losses = [r["training_loss"] for r in metrics.read_jsonl(f"{run_dir}/metrics.jsonl")]
            assert len(losses) == 3 and all(np.isfinite(losses)), losses
            assert os.path.exists(f"{run_dir}/params.npz")
            print(f"LOSSES {strategy} {losses}", flush=True)


def main():
    if sys.argv[1] == "single":
        assert jax.device_count() == 4 and jax.process_count() == 1
        train_runs(sys.argv[2], 0, ["replicate"])
        print("SINGLE_OK", flush=True)
        return
    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    assert jax.device_count() == 4 and jax.local_device_count() == 2

    import numpy as np

    from pg_jax import predict_fns, sharding
    from tests import tiny_model

    vocab, res = 97, 28
    model, params = tiny_model.make("tiny_pg1", res=res, vocab_size=vocab)
    decode = predict_fns.get_all(model)["decode"]
    rng = np.random.default_rng(10 + pid)  # each process has its own rows
    text = rng.integers(3, vocab, (4, 5)).astype(np.int32)
    text[:, 0] = 2
    rows = {
        "image": rng.uniform(-1, 1, (4, res, res, 3)).astype(np.float32),
        "text": text,
        "mask_input": np.ones_like(text, bool),
        "mask_ar": np.zeros_like(text),
    }
    kw = {"max_decode_len": 4, "eos_id": -1}
    expected = np.asarray(decode(jax.device_put(params, jax.local_devices()[0]), rows, **kw))
    mesh = sharding.make_mesh([("data", -1)])
    for rule in ("replicate()", 'fsdp(axis="data", min_size_mb=0)'):
        placed = jax.device_put(params, sharding.infer_sharding(params, [(".*", rule)], mesh))
        got = np.asarray(decode(placed, rows, **kw))
        np.testing.assert_array_equal(got, expected, err_msg=rule)

    train_runs(workdir, pid, ["replicate", "fsdp"])
    print(f"MULTIPROCESS_OK {pid}", flush=True)


if __name__ == "__main__":
    main()
