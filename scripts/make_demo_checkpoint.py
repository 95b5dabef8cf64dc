r"""Makes pg_jax/assets/demo_tiny_pg1_112.npz, the embedded default's pretrained checkpoint.

Full training of tiny_pg1 at 112 px from random init on the "demo_read" synthetic task
(configs/demo_pretrain.py): the demo's kind of pages, drawn with another seed, with questions
that name a place on the page ("Title?", "Line 2?") instead of a DocVQA field. The demo then
starts from this file as a user starts from a released PaliGemma, and fine-tunes its attention
on DocVQA questions it has never seen::

    python scripts/make_demo_checkpoint.py --workdir /tmp/pg_demo_pretrain

The file is stored in bfloat16, like Kaggle's .bf16.npz releases (3.6 MiB).

The shipped file (RECORDED_SHA256, checked by tests/test_configs.py) comes from the GPU recipe
below, recorded 2026-12-01: 30000 demo_read pages of seed 1 -> 60000 examples written by the
real pipeline on a 2-core CPU (29.8 MiB, 9 min 32 s), then 20000 steps of batch 64 (21 epochs),
Adam lr 2e-3 cosine with 4% warmup, text_len 24, from random init on one NVIDIA H200: 331 s in
all, 65 steps/s (the tiny model is bound by the Python loop there, not by the GPU); training
loss 7.49 at step 10, 2e-4 at 1000, below 5e-5 from step 2030 on (so far fewer steps would do;
not measured). The demo's first evaluation of this file (its
"base" row, held-out DocVQA questions it has never seen): ANLS 0.49, "layout" 0.98 (it reads
the title), "form" 0.00 (it reads values by position, not by field name); after the demo's 400
attention-only steps: 1.00, 1.00, 1.00.

The CPU recipe (the default --steps 1500,2500, batch 16, from the 2000-page set generated on the
fly) took 40 min on the shared 2-core CPU and gave a model that reads titles but not the values
by position (held-out "Line k?" ANLS 0.06 after 2500 steps; the loss sat at chance for the first
~900 steps): too little pretraining for the demo's fine-tuning to reach the field values, so
the file is made on a GPU.

On a GPU machine without TensorFlow, the trainer reads the examples from a file of
preprocessed arrays (``pg_jax.data.preprocessed_arrays``), written beforehand where TensorFlow
is by the real pipeline of configs/demo_pretrain.py over a demo_read set of N pages (one pass
over every page and question; the pages of seed 1, whose first 2000 are the CPU recipe's). The
run has no held-out evaluation (the evaluators read through tf.data): score the written .npz
where TensorFlow is (the demo's base row does)::

    python scripts/make_demo_checkpoint.py --write_arrays /tmp/demo_arrays.npz --pages 30000
    python scripts/make_demo_checkpoint.py --arrays /tmp/demo_arrays.npz \
        --workdir /tmp/pg_demo_pretrain_gpu --steps 20000 --batch_size 64

Measured for the writer on the shared 2-core CPU: 30000 pages -> 60000 examples, 29.8 MiB (gray
images, each page's stored once), 9 min 32 s (generating 298 s, preprocessing 275 s).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time

ASSET = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "pg_jax", "assets", "demo_tiny_pg1_112.npz",
)
RECORDED_SHA256 = "a19be8170e065bbdf88831a49f3b57b7d303dbef2a823669329b8239624c279e"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pretrain_config(steps: int, *, arrays: str = "", batch_size: int | None = None,
                    lr: float | None = None):
    """configs/demo_pretrain.py for `steps` total steps; with `arrays`, trained on that file's
    examples and with no evaluators (theirs read through tf.data), so no TensorFlow runs."""
    from configs import demo_pretrain

    config = demo_pretrain.get_config(f"steps={steps}")
    if arrays:
        config.input.data = {"name": "arrays", "path": arrays}
        config.evals = {}
    if batch_size:
        config.input.batch_size = batch_size
    if lr:
        config.lr = lr
    return config


def write_arrays(path: str, pages: int, seed: int) -> None:
    """Generates a demo_read set of `pages` train pages and writes the examples that
    demo_pretrain's training pipeline makes of them (one pass) to `path`."""
    import tempfile

    from pg_jax.data import core, preprocessed_arrays, synthetic

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="demo_read_") as tmp:
        print(f"Generating {pages} demo_read pages (seed {seed})", flush=True)
        synthetic.generate(tmp, seed=seed, num_pages=pages, fmt="docvqa-json",
                           difficulty="demo_read", progress=True)
        t1 = time.time()
        source = core.get("docvqa_json", path=os.path.join(tmp, "docvqa"), split="train")
        config = pretrain_config(1)
        written = preprocessed_arrays.write(path, source, config.input.pp, seed=config.seed)
    print(f"Wrote {path}: {written['examples']} examples ({written['images']} distinct "
          f"images), "
          f"{written['bytes'] / 2**20:.1f} MiB, in {time.time() - t0:.0f}s (generating "
          f"{t1 - t0:.0f}s, preprocessing {time.time() - t1:.0f}s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", help="the pretraining run's directory")
    p.add_argument(
        "--steps", default="1500,2500",
        help="total steps, or several totals: each run resumes the last and extends it to a new "
        "cosine schedule (the recorded recipe: 1500, then 2500)",
    )
    p.add_argument("--out", default=ASSET, help="where the bfloat16 .npz goes")
    p.add_argument("--batch_size", type=int, help="default: configs/demo_pretrain.py's (16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the config's, 2e-3)")
    p.add_argument("--arrays", default="", help="train on this preprocessed arrays file "
                   "(--write_arrays) instead of the pipeline: no TensorFlow, no evaluation")
    p.add_argument("--write_arrays", metavar="FILE", help="only write the preprocessed arrays "
                   "file of --pages demo_read pages (needs TensorFlow), then exit")
    p.add_argument("--pages", type=int, default=2000, help="pages for --write_arrays")
    p.add_argument("--seed", type=int, default=None,
                   help="page seed for --write_arrays (default: the CPU recipe's set's, 1)")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if a.write_arrays:
        from pg_jax.data import synthetic

        seed = synthetic.PLACEHOLDER_SEED["demo_read"] if a.seed is None else a.seed
        write_arrays(a.write_arrays, a.pages, seed)
        return
    if not a.workdir:
        p.error("--workdir is required (except with --write_arrays)")
    if a.arrays and not os.path.exists(a.arrays):
        p.error(f"--arrays {a.arrays}: no such file (write it with --write_arrays)")
    from pg_jax import train
    from pg_jax.models import exporter, loader

    t0 = time.time()
    for steps in a.steps.split(","):
        config = pretrain_config(int(steps), arrays=a.arrays, batch_size=a.batch_size, lr=a.lr)
        try:
            summary = train.train(config, a.workdir)
        except (ValueError, FileNotFoundError) as e:  # a config, data or checkpoint error
            sys.exit(f"error: {e}")
        if "preempted_at" in summary:
            sys.exit("interrupted; rerun the same command to resume")
    _, params = loader.load(os.path.join(a.workdir, "params.npz"))
    tmp = a.out + ".tmp"
    exporter.save_npz(params, tmp, dtype="bfloat16")
    shutil.move(tmp, a.out)
    print(f"Wrote {a.out} ({os.path.getsize(a.out) / 2**20:.1f} MiB) in "
          f"{time.time() - t0:.0f}s; sha256 {sha256(a.out)}")
    for k in sorted(summary):
        if "/anls" in k:
            print(f"  {k}: {summary[k]:.4f}")


if __name__ == "__main__":
    main()
