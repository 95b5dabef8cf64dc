"""The run's model config, built in one place from the training config.

``build(config, dtype=..., vocab_size=...)`` returns the keyword arguments of
``paligemma.Model``: read off the checkpoint's shapes when ``config.model_init`` names one,
else the named variant ``config.model_name`` at ``config.input.res``; then the run's compute
settings (dtype, remat, attention, unrolled layers). A new model option is one line here (and
its config leaf), nowhere else.
"""

from __future__ import annotations

import copy

from pg_jax.models import loader, lora, variants


def build(config, *, dtype: str, vocab_size: int, tokenizer_path: str = "") -> dict:
    """``paligemma.Model(**build(...))`` is the run's model.

    Args:
      config: the training config (model_init, model_name, remat_policy, attention_impl,
        unroll_llm_layers, input.res, lora).
      dtype: the compute dtype (``devices.resolve_dtypes``).
      vocab_size: the tokenizer's; the model must hold at least as many embeddings.
      tokenizer_path: named in the error when the vocabularies do not match.

    Returns:
      The model config dict.
    """
    init_path = config.model_init
    model_kw = {
        "dtype": dtype,
        "remat_policy": config.remat_policy,
        "attention_impl": config.attention_impl,
    }
    if init_path:
        model_cfg = loader.read_model_config(init_path, **model_kw)
    else:
        model_cfg = variants.get_config(
            config.model_name, res=config.input.res, vocab_size=vocab_size, **model_kw
        ).to_dict()
    if model_cfg["img"]["image_size"] != config.input.res:
        raise ValueError(
            f"{init_path} is a {model_cfg['img']['image_size']} px model but "
            f"config res={config.input.res}; pass the matching res="
        )
    if model_cfg["llm"]["vocab_size"] < vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_path} has {vocab_size} pieces but the model only "
            f"{model_cfg['llm']['vocab_size']}"
        )
    if unroll_llm_layers(config):
        model_cfg["llm"]["scan_unroll"] = model_cfg["llm"]["depth"]
    model_cfg["lora"], _ = lora.from_config(config.get("lora"))
    return model_cfg


def with_remat(model_cfg: dict, remat_policy: str) -> dict:
    """A copy of ``model_cfg`` with another remat policy (layers unrolled iff no remat, as
    ``unroll_llm_layers`` "auto" does): the fit check's variant of the run's model."""
    cfg = copy.deepcopy(model_cfg)
    for tower in ("img", "llm"):
        cfg[tower]["remat_policy"] = remat_policy
    cfg["llm"]["scan_unroll"] = cfg["llm"]["depth"] if remat_policy == "none" else 1
    return cfg


def unroll_llm_layers(config) -> bool:
    """config.unroll_llm_layers: "true", "false", or "auto" = unrolled unless rematerialised.

    Unrolled layers train faster and keep less memory than a rolled scan when activations are
    saved (BENCHMARKS.md). With remat they stay rolled: unrolled, XLA is free to schedule every
    layer's recomputation early, and the memory that remat should save is not saved.
    """
    choice = str(config.unroll_llm_layers).lower()
    if choice not in ("auto", "true", "false"):
        raise ValueError(f"config.unroll_llm_layers={choice!r}: expected auto, true or false")
    if choice == "auto":
        return config.remat_policy == "none"
    return choice == "true"
