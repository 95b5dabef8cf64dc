r"""Pretraining of the embedded default's checkpoint (pg_jax/assets/demo_tiny_pg1_112.npz).

Full training of the tiny PaliGemma from random init on the "demo_read" synthetic task: the
demo's kind of pages (other pages: another seed), with questions that name a place on the page
("What is the title?", "What is the value on line 2?") instead of a DocVQA field. The result
reads pages but has never seen a DocVQA question, as a released PaliGemma has seen OCR and
captions but not your task; the demo (configs/docvqa.py without arguments) then fine-tunes its
attention on the DocVQA questions. Run by scripts/make_demo_checkpoint.py, which records the
recipe, time and scores::

    python scripts/make_demo_checkpoint.py --workdir /tmp/pg_demo_pretrain
"""

from __future__ import annotations

from configs import docvqa

PRETRAIN_STEPS = 1500


def get_config(arg: str | None = None):
    """The demo config, changed to full training from random init on the reading task.

    Args:
      arg: ``steps=N`` (default PRETRAIN_STEPS).

    Returns:
      The ConfigDict read by ``pg_jax.train``.
    """
    from configs.common import parse_arg

    a = parse_arg(arg, steps=PRETRAIN_STEPS)
    # The "ocr" answers are ten tokens: a longer text and scored answer than the demo's (the
    # model has no fixed text length, so the demo still runs it at 16).
    cfg = docvqa.get_config("text_len=24")
    cfg.demo = False  # no before/after table of the demo
    cfg.model_init = ""  # random init of cfg.model_name
    cfg.synthetic = "demo_read"
    cfg.freeze = "full"
    cfg.schedule = docvqa._schedule("full", {"decay_type": "cosine", "warmup_percent": 0.04})
    cfg.total_steps = a.steps
    cfg.lr = 2e-3
    cfg.ckpt_steps = 500
    cfg.export_hf = False
    cfg.loss_len = 12
    cfg.eval_at_start = False
    # Decode accuracy on held-out reading questions every 300 steps; no perplexity.
    cfg.evals = {
        k: dict(v, every_steps=300, max_decode_len=12, report=False)
        for k, v in cfg.evals.to_dict().items()
        if "pplx" not in k
    }
    return cfg
