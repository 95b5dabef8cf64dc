"""The embedded default run (configs/docvqa.py without data or checkpoint): what it says first.

The demo is an ordinary one-stage run of the trainer on a config; only its first lines differ,
so that a newcomer knows what is running and how to train on real files instead.
"""

from __future__ import annotations

DEMO_BANNER = """\
No checkpoint and no data configured: running the EMBEDDED DEFAULT.
  model: a tiny PaliGemma ({variant}, real architecture) at {res} px, pretrained to read this
  kind of page (the shipped {ckpt}), but new to DocVQA questions;
  data: the synthetic DocVQA set ({data}), tokenizer: the small project tokenizer.
  It fine-tunes only llm/layers/attn/*, as you would from a released checkpoint, and writes
  {workdir}/docvqa_val.html (answers beside their pages) and {workdir}/training_curve.png.
To train on real files:
  python -m pg_jax.train --workdir DIR --config configs/docvqa.py:res=448,\\
ckpt=paligemma-3b-pt-448.npz,tokenizer=paligemma_tokenizer.model,data=/data/docvqa_448"""


def print_banner(config, workdir: str) -> None:
    """Prints the banner for a demo config (``config.demo``)."""
    print(DEMO_BANNER.format(variant=config.model_name, res=config.input.res,
                             data=f"{config.synthetic} difficulty", ckpt=config.model_init,
                             workdir=workdir), flush=True)
