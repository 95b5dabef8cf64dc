r"""Makes pg_jax/assets/demo_tiny_pg1_112.npz, the embedded default's pretrained checkpoint.

Full training of tiny_pg1 at 112 px from random init on the "demo_read" synthetic task
(configs/demo_pretrain.py): the demo's kind of pages, drawn with another seed, with questions
that name a place on the page ("Title?", "Line 2?") instead of a DocVQA field. The demo then
starts from this file as a user starts from a released PaliGemma, and fine-tunes its attention
on DocVQA questions it has never seen::

    python scripts/make_demo_checkpoint.py --workdir /tmp/pg_demo_pretrain

The file is stored in bfloat16 (the layout of Kaggle's .bf16.npz releases), RECORDED below.

Recorded run (RECORDED_SHA256 is checked by tests/test_configs.py):
  TO BE FILLED
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
RECORDED_SHA256 = ""


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="the pretraining run's directory")
    p.add_argument("--steps", type=int, default=None, help="default: configs/demo_pretrain.py")
    p.add_argument("--out", default=ASSET, help="where the bfloat16 .npz goes")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import demo_pretrain
    from pg_jax import train
    from pg_jax.models import exporter, loader

    config = demo_pretrain.get_config(f"steps={a.steps}" if a.steps else None)
    t0 = time.time()
    summary = train.train(config, a.workdir)
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
