r"""PaliGemma attention-only fine-tuning on DocVQA (big_vision's DocVQA transfer, adapted).

Embedded default (no checkpoint, no data): a tiny PaliGemma of the real architecture, the project
tokenizer and the synthetic DocVQA set (generated on first use, in the real DocVQA file format),
fine-tuned attention-only from the shipped pretrained checkpoint pg_jax/assets/
demo_tiny_pg1_112.npz, as a real run fine-tunes a released PaliGemma::

    python -m pg_jax.train --config configs/docvqa.py --workdir /tmp/pg_demo

  The checkpoint (made by scripts/make_demo_checkpoint.py, recipe in configs/demo_pretrain.py)
  reads this kind of page by position ("Title?", "Line 2?") but has never seen a DocVQA
  question; the fine-tuning teaches it that "What is the total?" is the value next to "Total"
  and that "What type of document is this?" is the title in lower case.
  Measured 2026-12-01 (the 2-core CPU, quiet: load average ~1): 2 min 5 s in all with an empty
  cache, generating the synthetic set (15 s) included, 400 attention-only steps of 16. On 256
  held-out synthetic questions ANLS goes 0.49 -> 1.00 against 0.15 for the image-blind "always
  'invoice'" baseline: page type ("layout") 0.98 -> 1.00 (the checkpoint reads titles), field
  values ("form") 0.00 -> 1.00 (it reads values by position; the fine-tuning teaches which
  position a question names), perplexity 2.6e5 -> 1.02.

Real run (PaliGemma 1 3B at 448 px, one 16 GB card, attention-only, frozen weights in bf16/f16)::

    python -m pg_jax.prepare_data --source hf-parquet --input D --split train --res 448 \
        --out /data/docvqa_train_448
    python -m pg_jax.train --workdir /tmp/pg_docvqa \
      --config configs/docvqa.py:res=448,ckpt=/ckpt/paligemma-3b-pt-448.npz,\
tokenizer=/ckpt/paligemma_tokenizer.model,data=/data/docvqa_train_448

  ``data`` is a prepare_data cache, an HF parquet directory or the original JSON release (the
  reader is chosen by what is there; with ``cache_dir=DIR`` a raw source is prepared into DIR on
  first use and read from there afterwards; ``data=random`` trains on random batches, to
  measure speed on a machine without data or TensorFlow). Arguments (``:key=value,...``): res,
  variant (no ckpt only; the demo with another variant or res starts from random init), ckpt,
  tokenizer, data, cache_dir, eval_data, freeze (attn | full | llm | vit_frozen | lora), lora_rank
  (8), lora_targets (attn | attn_mlp), mode
  (full | runlocal), text_len, dtype (auto | bfloat16 | float16 | float32), sharding (replicate |
  fsdp), synthetic_pages (train pages of the set generated when no data is given; 2000), prompt
  (the prompt template; "{question}"). Leaf overrides:
  ``--config.lr=3e-5 --config.input.batch_size=16``.
"""

from __future__ import annotations

import os

import ml_collections

import pg_jax
from configs.common import combine_and_keep_eval, combine_and_keep_train, parse_arg

# The structural arguments (``configs/docvqa.py:key=value,...``) and their defaults.
CONFIG_ARGS = dict(
    res=0,
    variant="",
    ckpt="",
    tokenizer="",
    data="",
    cache_dir="",
    eval_data="",
    freeze="attn",
    mode="full",
    text_len=0,
    dtype="auto",
    sharding="replicate",
    synthetic_pages=2000,
    prompt="{question}",
    lora_rank=8,
    lora_targets="attn",
)

# Embedded-default settings: tuned to learn visibly in a few minutes on a 2-core CPU.
DEMO_RES = 112
DEMO_TEXT_LEN = 16
DEMO_FINETUNE_STEPS = 400
# The demo's starting point: tiny_pg1 at DEMO_RES, pretrained to read this kind of page (not to
# answer DocVQA questions) by scripts/make_demo_checkpoint.py; bfloat16, big_vision layout.
DEMO_CHECKPOINT = os.path.join(os.path.dirname(pg_jax.__file__), "assets", "demo_tiny_pg1_112.npz")


def _data(path: str, split: str, synthetic_pages: int = 2000) -> dict:
    """``config.input.data`` for a path: the reader is chosen from what is there when the data
    is read (``pg_jax.data.core.resolve``), so the config stays data. "random": random batches,
    to measure speed without data (``pg_jax.data.random_batches``); "": the synthetic set."""
    if path == "random":
        return {"name": "random"}
    if not path:  # generated on first use by the trainer
        return {"name": "docvqa_json", "path": "synthetic", "split": split,
                "num_pages": synthetic_pages}
    return {"name": "docvqa", "path": path, "split": split}


def _pp_image(res: int) -> str:
    return f"decode|resize({res})|value_range(-1, 1)"


def training_data(c) -> ml_collections.ConfigDict:
    """The input section: source, preprocessing and batching."""
    inp = ml_collections.ConfigDict()
    inp.data = _data(c.data, "train", c.synthetic_pages)
    inp.res = c.res
    inp.text_len = c.text_len
    # big_vision's DocVQA prompt is the bare question (HF recipes: "answer en {question}"); one
    # of the accepted answers, chosen per example and epoch, is the target.
    inp.pp = "|".join([
        _pp_image(c.res),
        f"prompt({c.prompt!r})|choice(inkey='answers', outkey='suffix')",
        combine_and_keep_train(c.text_len, c.tokenizer),
    ])  # fmt: skip
    inp.batch_size = 2 if c.mode == "runlocal" else (16 if c.demo else 8)
    inp.shuffle_buffer = 0 if c.mode == "runlocal" else 1000
    # A directory to prepare a raw (parquet / JSON) source into on first use, so that later runs
    # start in seconds (see pg_jax.prepare_data); "" reads the raw source every time.
    inp.cache_dir = c.cache_dir
    return inp


def vqa_eval_pp(c) -> str:
    """Decoding input plus what scoring and the report read: the accepted answers (padded to
    16 so they batch; "" is ignored), the question and its types (padded to 8)."""
    return "|".join([
        _pp_image(c.res),
        f"prompt({c.prompt!r})",
        "tolen(16, pad_value='', key='answers')|tolen(8, pad_value='', key='question_types')",
        combine_and_keep_eval(c.text_len, c.tokenizer,
                              keep=("answers", "question_id", "question", "question_types")),
    ])  # fmt: skip


def add_evals(c, cfg) -> None:
    """Held-out perplexity and the ANLS decode evaluator (with an image-blind baseline)."""
    data = _data(c.eval_data or c.data, "val", c.synthetic_pages)
    limit = 16 if c.mode == "runlocal" else (256 if c.demo else None)
    if limit:
        data["limit"] = limit  # a prepared cache ignores it (its selection is fixed)
    every = 0 if c.demo else 500
    cfg.evals = {}
    cfg.evals["docvqa/val/pplx"] = {
        "type": "perplexity",
        "every_steps": every,
        "data": data,
        "pp_fn": cfg.input.pp,  # the training loss's input, answers chosen with a fixed seed
        "batch_size": 64 if c.demo else 16,
        "loss_len": cfg.loss_len,
    }
    cfg.evals["docvqa/val"] = {
        "type": "vqa",
        "every_steps": every,
        "data": data,
        "pp_fn": vqa_eval_pp(c),
        "batch_size": 64 if c.demo else 16,
        "max_decode_len": 8 if c.demo else c.text_len,
        # The demo's HTML report: each held-out question with its page, worst first.
        "report": c.demo,
        # Prints what an image-blind model (the most common training answer) scores.
        "baseline_data": cfg.input.data.to_dict(),
    }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The training config.

    The embedded default's numbers are in the module docstring; the trainer prints the
    wall-clock and the before/after metrics of each stage.

    Args:
      arg: ``key=value,...`` (see the module docstring).

    Returns:
      The ConfigDict read by ``pg_jax.train``.
    """
    c = parse_arg(arg, **CONFIG_ARGS)
    if c.mode not in ("full", "runlocal"):
        raise ValueError(f"mode={c.mode!r}: expected full or runlocal")
    if c.sharding not in ("replicate", "fsdp"):
        raise ValueError(f"sharding={c.sharding!r}: expected replicate or fsdp")
    c.demo = not c.ckpt and not c.data
    # The demo starts from the shipped checkpoint, unless another architecture is asked for.
    from_demo_checkpoint = c.demo and not c.variant and c.res in (0, DEMO_RES)
    c.variant = c.variant or "tiny_pg1"
    c.res = c.res or (DEMO_RES if c.demo else 224)
    c.text_len = c.text_len or (DEMO_TEXT_LEN if c.demo else 32)

    cfg = ml_collections.ConfigDict()
    # The structural arguments (c) are not kept as leaves: changing one must rebuild the
    # config (configs/docvqa.py:freeze=full), and a leaf that changed nothing would be a trap.
    cfg.seed = 0
    cfg.demo = c.demo

    # Model: from a checkpoint (architecture read off its shapes) or a named variant, random init.
    cfg.model_init = DEMO_CHECKPOINT if from_demo_checkpoint else c.ckpt
    cfg.model_name = c.variant
    cfg.tokenizer = c.tokenizer  # "" = the small project tokenizer
    cfg.dtype = c.dtype  # auto: bfloat16, float16 on GPUs without it (T4, P100), float32 on CPU
    # Frozen weights' storage; auto = the compute dtype. "int8": 8 bits per weight (memory);
    # "float8": 8 bits and FP8 products on GPUs that have them (H100/H200/L4: speed and memory).
    cfg.frozen_dtype = "auto"
    cfg.loss_scale = "auto"  # dynamic loss scaling when dtype is float16
    cfg.remat_policy = "none" if c.demo or c.mode == "runlocal" else "nothing_saveable"
    # auto: on bf16 GPUs the LLM takes the Pallas forward kernel (pg_jax.models.flash_attention;
    # it takes PaliGemma 2's soft-cap) and the image tower cuDNN's fused attention; else einsum.
    cfg.attention_impl = "auto"
    # Unrolled LLM layers train faster with less memory than a rolled scan (PG1-3B 224/32 on an
    # H100: 1.23x, 46.6 -> 26.7 GiB; BENCHMARKS.md) for ~35 s more compile. "auto": unrolled
    # when remat_policy is "none" (with remat, a rolled scan is what keeps memory low); or
    # "true" / "false".
    cfg.unroll_llm_layers = "auto"

    cfg.input = training_data(c)
    cfg.synthetic = "demo"  # difficulty of the generated set when no data is given
    cfg.loss_len = 4 if c.demo else 16  # answer tokens scored per example (logits only there)

    # Durations: total_steps, when set, wins over total_epochs (``--config.total_steps=N``).
    # Typed placeholders, so that an unset one can still be set from the command line.
    random_data = c.data == "random"
    steps = 2 if c.mode == "runlocal" else (
        DEMO_FINETUNE_STEPS if c.demo else (100 if random_data else None))
    cfg.total_steps = ml_collections.config_dict.placeholder(int)
    cfg.total_steps = steps
    cfg.total_epochs = ml_collections.config_dict.placeholder(float)
    cfg.total_epochs = None if steps else 3.0
    cfg.grad_accum_steps = 1

    # Optimizer (big_vision DocVQA: Adam b2=0.999, lr 1e-5, cosine, 5% warm-up, clip 1, wd 1e-6).
    cfg.schedule = _schedule(c.freeze, {"decay_type": "cosine", "warmup_percent": 0.05})
    cfg.optax_name = "adam"
    cfg.optax = {"b2": 0.999}
    cfg.lr = 1e-3 if c.demo else 1e-5
    cfg.wd = 1e-6
    cfg.wd_mults = [(".*/kernel$", 1.0), (".*_einsum/w$", 1.0)]
    cfg.grad_clip_norm = 1.0
    if c.freeze == "lora":
        add_lora(c, cfg)

    # Sharding over all devices, logging, checkpoints. "replicate" (data parallel) keeps a full
    # copy of the weights per device: PG1-3B on 2 H100s ran 1.96x one GPU, FSDP 1.05x (the
    # frozen weights are gathered every step; BENCHMARKS.md). "fsdp" splits weights and
    # optimizer state over the devices, for models that do not fit one (PaliGemma 2 10B/28B).
    cfg.mesh = [("data", -1)]
    cfg.sharding_strategy = (
        [(".*", 'fsdp(axis="data")')] if c.sharding == "fsdp" else [(".*", "replicate()")]
    )
    cfg.log_training_steps = 1 if c.mode == "runlocal" else 10
    cfg.ckpt_steps = 1 if c.mode == "runlocal" else (100 if c.demo else 500)
    cfg.keep_ckpts = 2
    cfg.export_npz = not random_data  # params.npz of the merged params
    cfg.export_hf = not random_data  # an HF model directory next to it
    cfg.progress_bar = True  # False: one log line per log_training_steps instead
    cfg.eval_at_start = c.demo  # the demo prints every metric before and after training
    add_evals(c, cfg)
    if random_data:
        cfg.evals = {}  # random tokens have nothing to evaluate

    return cfg


def add_lora(c, cfg) -> None:
    """LoRA factors on the ``lora_targets`` weights (freeze=lora trains only them).

    The factors are new parameters: ``init_missing`` lets the checkpoint lack them (they are
    initialised, B = 0, so step 0 is the checkpoint's model). ``lora.adapter`` starts them from
    a PEFT adapter directory instead (e.g. one trained with transformers + PEFT).
    """
    from pg_jax.models import lora  # light: no TensorFlow

    if c.lora_targets not in lora.TARGETS:
        raise ValueError(f"lora_targets={c.lora_targets!r}: expected one of {sorted(lora.TARGETS)}")
    cfg.lora = ml_collections.ConfigDict()
    cfg.lora.rank = c.lora_rank
    cfg.lora.alpha = float(2 * c.lora_rank)  # scale alpha / rank = 2, as common PEFT recipes
    cfg.lora.dropout = 0.0  # PEFT's lora_dropout: on the factors' inputs, in training only
    cfg.lora.targets = list(lora.TARGETS[c.lora_targets])  # regexes over weight names
    cfg.lora.adapter = ""
    cfg.init_missing = [lora.FACTOR_PATTERN]
    # Factors start at zero effect and have few parameters: they take a larger step than
    # full attention weights (1e-5).
    cfg.lr = 2e-3 if c.demo else 2e-4
    cfg.wd_mults = []  # no decay towards zero on the factors


def _schedule(freeze: str, sched: dict) -> list:
    """config.schedule from a freeze preset: trainable regexes get `sched`, the rest None."""
    from pg_jax import optim  # light: no TensorFlow

    if freeze not in optim.PRESETS:
        raise ValueError(f"freeze={freeze!r}: expected one of {sorted(optim.PRESETS)}")
    return [(regex, dict(sched) if trains else None) for regex, trains in optim.PRESETS[freeze]]


def metrics(arg: str | None = None) -> list[str]:
    """Keys worth plotting."""
    del arg
    return [
        "training_loss",
        "docvqa/val/pplx/loss",
        "docvqa/val/anls",
    ]
