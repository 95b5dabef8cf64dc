"""The trainer and its ANLS evaluator on one mesh, with sharding=replicate and fsdp.

``python tests/mesh_check.py CKPT DATA WORKDIR`` (run with N fake CPU devices: XLA_FLAGS=
--xla_force_host_platform_device_count=N) prints one ``MESH_RESULT {json}`` line per strategy:
the training losses, the final evaluation's metrics and answers, and how many parameter and
optimizer-state leaves were split over the mesh. tests/test_meshes.py compares them with one
device. `run` is also called in the test process, for that one-device reference.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from pg_jax import metrics, train
from pg_jax import state as state_lib

STRATEGIES = ("replicate", "fsdp")


def tiny_config(ckpt: str, data: str, strategy: str):
    from configs import docvqa

    cfg = docvqa.get_config(
        f"mode=runlocal,res=28,text_len=16,ckpt={ckpt},data={data},sharding={strategy}")
    if strategy == "fsdp":
        assert cfg.sharding_strategy == [(".*", 'fsdp(axis="data")')], cfg.sharding_strategy
        # The config's rule keeps arrays under 4 MB whole; the tiny model has none that big.
        cfg.sharding_strategy = [(".*", 'fsdp(axis="data", min_size_mb=0)')]
    cfg.total_steps = 2
    cfg.unroll_llm_layers = "false"  # a rolled layer scan compiles faster
    cfg.input.batch_size = 8  # 4 or 1 rows per device on 2 or 8 devices
    cfg.input.shuffle_buffer = 0
    vqa = dict(cfg.evals["docvqa/val"], batch_size=8, max_decode_len=4)
    vqa["data"] = dict(vqa["data"], limit=8)
    cfg.evals = {"docvqa/val": vqa}  # the decoding evaluator, at the end
    cfg.export_npz = cfg.export_hf = False
    cfg.progress_bar = False
    return cfg


def _split_leaves(state) -> int:
    return sum(any(a is not None for a in x.sharding.spec) for x in jax.tree.leaves(state))


def run(ckpt: str, data: str, workdir: str, strategy: str) -> dict:
    """One tiny training run on all devices; what the test compares."""
    split = []
    materialize = state_lib.materialize

    def materialize_and_count(*args, **kw):
        state = materialize(*args, **kw)
        split.append(_split_leaves(state))
        return state

    state_lib.materialize = materialize_and_count
    try:
        summary = train.train(tiny_config(ckpt, data, strategy), workdir)
    finally:
        state_lib.materialize = materialize
    with open(os.path.join(workdir, "docvqa_val.json")) as f:
        answers = {r["questionId"]: r["answer"] for r in json.load(f)}
    losses = [r["training_loss"] for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
              if "training_loss" in r]
    return {
        "strategy": strategy,
        "devices": jax.device_count(),
        "losses": losses,
        "anls": summary["docvqa/val/anls"],
        "num": summary["docvqa/val/num"],
        "answers": answers,
        "split_leaves": split[0],
    }


def main():
    ckpt, data, root = sys.argv[1:4]
    for strategy in STRATEGIES:
        result = run(ckpt, data, os.path.join(root, strategy), strategy)
        print("MESH_RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
