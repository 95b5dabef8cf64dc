"""The KerasHub side of bench_train.py and bench_decode.py, in its own process.

KerasHub's ``PaliGemmaCausalLM`` on the JAX backend, built from pg_jax's model config (the same
shapes: ``--model_json`` is ``pg_jax.models.variants.get_config(...).to_dict()``) with random
bf16 weights and no tokenizer or preprocessor. Needs only numpy, jax, keras and keras-hub, not
pg_jax, so it can run under another interpreter (``--keras_python`` of the two callers).

  train   the training step: ``compile()`` + ``train_on_batch`` on the same inputs as the other
          sides (32 text tokens, loss on the last 8); ``--mode attn`` trains the LLM's attention
          layers, ``--mode lora`` calls ``backbone.enable_lora(rank)`` as KerasHub's fine-tuning
          tutorial does (its default targets: query and value of every attention layer, the
          image tower's included).
  decode  ``generate()`` with the greedy sampler, no stop token, prompt + N new tokens.

Prints one line ``SIDE_RESULT {json}``; peak memory is the device's ``peak_bytes_in_use`` after
the timed runs (the process's peak since start).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax
import keras
import keras_hub
import numpy as np

TEXT_LEN, LOSS_LEN = 32, 8
RESULT = "SIDE_RESULT "


def backbone_kwargs(cfg: dict) -> dict:
    """PaliGemmaBackbone arguments for pg_jax's model config."""
    img, llm = cfg["img"], cfg["llm"]
    kw = {
        "vocabulary_size": llm["vocab_size"],
        "image_size": img["image_size"],
        "num_layers": llm["depth"],
        "num_query_heads": llm["num_heads"],
        "num_key_value_heads": llm["num_kv_heads"],
        "hidden_dim": llm["width"],
        "intermediate_dim": 2 * llm["mlp_dim"],  # KerasHub's Gemma counts gate and up together
        "head_dim": llm["head_dim"],
        "vit_patch_size": img["patch_size"],
        "vit_num_heads": img["num_heads"],
        "vit_hidden_dim": img["width"],
        "vit_num_layers": img["depth"],
        "vit_intermediate_dim": img["mlp_dim"],
    }
    if llm.get("post_norms"):  # PaliGemma 2 (Gemma 2)
        kw.update(
            use_post_ffw_norm=True,
            use_post_attention_norm=True,
            attention_logit_soft_cap=llm.get("attn_logits_softcap"),
            final_logit_soft_cap=llm.get("final_logits_softcap"),
            use_sliding_window_attention=True,
            sliding_window_size=4096,
            query_head_dim_normalize=llm.get("query_pre_attn_norm") != "rsqrt_emb_per_head",
        )
    return kw


def build(cfg: dict) -> keras_hub.models.PaliGemmaCausalLM:
    """Random weights in the config's dtype (bench_decode's --dtype), bf16 by default."""
    keras.utils.set_random_seed(0)
    dtype = cfg["llm"].get("dtype") or "bfloat16"
    backbone = keras_hub.models.PaliGemmaBackbone(**backbone_kwargs(cfg), dtype=dtype)
    return keras_hub.models.PaliGemmaCausalLM(backbone=backbone, preprocessor=None)


def _peak_gib() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else float("nan")


def _versions() -> str:
    return f"keras {keras.__version__}, keras-hub {keras_hub.__version__}, jax {jax.__version__}"


def train(cfg: dict, mode: str, batch: int, steps: int, lora_rank: int) -> dict:
    lm = build(cfg)
    backbone = lm.backbone
    if mode == "lora":
        backbone.enable_lora(rank=lora_rank)
        note = f"enable_lora(rank={lora_rank})"
    else:
        # Freeze everything, then unfreeze the LLM's attention layers, as enable_lora does for
        # its targets: a variable trains when its own layer is trainable.
        for layer in backbone._flatten_layers(include_self=False):
            layer.trainable = False
        for block in backbone.transformer_layers:
            block.attention.trainable = True
        note = "LLM attention trainable"
    lm.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-5, weight_decay=0.0),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip

    res = cfg["img"]["image_size"]
    rng = np.random.default_rng(0)
    text = rng.integers(3, cfg["llm"]["vocab_size"], (batch, TEXT_LEN + 1)).astype(np.int32)
    response = np.zeros((batch, TEXT_LEN), np.int32)
    response[:, -LOSS_LEN:] = 1  # the answer: causal attention and the loss
    # On the device once, as the other sides keep their inputs (no host copy per step).
    x = jax.device_put({
        "images": rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32),
        "token_ids": text[:, :-1],
        "padding_mask": np.ones((batch, TEXT_LEN), np.int32),
        "response_mask": response,
    })  # fmt: skip
    y = jax.device_put(text[:, 1:])
    w = jax.device_put(response.astype(np.float32))

    # train_on_batch returns the loss as a host number, so every step ends in a sync (one
    # dispatch gap per step, as fit() with its default logging).
    t = time.time()
    lm.train_on_batch(x, y, sample_weight=w)
    first = time.time() - t
    lm.train_on_batch(x, y, sample_weight=w)
    t = time.time()
    for _ in range(steps):
        loss = lm.train_on_batch(x, y, sample_weight=w)
    dt = (time.time() - t) / steps
    n_train = int(sum(np.prod(v.shape) for v in lm.trainable_variables))
    return {"examples_per_s": batch / dt, "step_ms": dt * 1e3, "peak_gib": _peak_gib(),
            "first_step_s": first, "loss": float(np.asarray(loss).reshape(-1)[0]),
            "trainable_params": n_train, "device": jax.devices()[0].device_kind,
            "note": note + ", Keras loss: mean over all 32 positions, weight 0 outside the "
                    "answer", "versions": _versions()}  # fmt: skip


def _median_time(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def decode(cfg: dict, batches: list[int], prompt_len: int, decode_len: int, iters: int,
           warmup: int) -> list[dict]:
    """Per batch size: prefill + decode_len greedy tokens, the prefill alone, ms per token."""
    lm = build(cfg)
    lm.compile(sampler="greedy")
    res, vocab = cfg["img"]["image_size"], cfg["llm"]["vocab_size"]
    rows = []
    for b in batches:
        rng = np.random.default_rng(0)
        prompt = rng.integers(3, min(vocab, 30_000), (b, prompt_len)).astype(np.int32)
        images = rng.uniform(-1, 1, (b, res, res, 3)).astype(np.float32)

        def run(n, prompt=prompt, images=images, b=b):
            # generate() fills the positions where padding_mask is 0: exactly n new tokens.
            inputs = {"images": images,
                      "token_ids": np.concatenate([prompt, np.zeros((b, n), np.int32)], 1),
                      "padding_mask": np.concatenate([np.ones_like(prompt),
                                                      np.zeros((b, n), np.int32)], 1)}  # fmt: skip
            return lambda: lm.generate(inputs, stop_token_ids=None)  # returns numpy: synced

        t_full = _median_time(run(decode_len), iters, warmup)
        t_one = _median_time(run(1), iters, warmup)
        t_more = _median_time(run(decode_len + 1), iters, warmup)
        rows.append({"batch": b, "seconds": t_full, "prefill_seconds": t_one,
                     "per_token_ms": 1e3 * (t_more - t_one) / decode_len,
                     "examples_per_sec": b / t_full, "peak_gib": _peak_gib()})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=["train", "decode"])
    p.add_argument("--model_json", required=True, help="pg_jax's model config as JSON")
    p.add_argument("--mode", choices=["attn", "lora"], default="attn")
    p.add_argument("--lora_rank", type=int, default=4)
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--decode_len", type=int, default=16)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    cfg = json.loads(a.model_json)
    if a.task == "train":
        out = train(cfg, a.mode, a.batch[0], a.steps, a.lora_rank)
    else:
        out = {"rows": decode(cfg, a.batch, a.prompt_len, a.decode_len, a.iters, a.warmup),
               "device": jax.devices()[0].device_kind, "versions": _versions()}  # fmt: skip
    print(RESULT + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
