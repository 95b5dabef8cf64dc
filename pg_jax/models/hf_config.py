"""Hugging Face PaliGemma model-directory files: config, generation, tokenizer.

``to_hf_config`` writes the values of the hub's ``google/paligemma-*`` and
``google/paligemma2-*`` configs (PaliGemma 2: attention soft-cap 50, final
soft-cap 30, ``query_pre_attn_scalar`` from the query rule, sliding window 4096);
``from_hf_config`` reads a config written by us, the hub or transformers, with
transformers' defaults for the fields hub configs omit.
"""

import json
import os
import shutil

from pg_jax.models import hf_convert

# transformers' defaults for fields the (sparse) hub configs leave out.
_GEMMA_DEFAULTS = dict(head_dim=256, rms_norm_eps=1e-6)
_GEMMA2_DEFAULTS = dict(head_dim=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                        query_pre_attn_scalar=256)
HUB_FINAL_LOGITS_SOFTCAP = 30.0  # PaliGemma 2 hub configs
HUB_SLIDING_WINDOW = 4096


def _query_pre_attn_scalar(llm: dict) -> float:
    if llm.get("query_pre_attn_norm", "rsqrt_head_dim") == "rsqrt_emb_per_head":
        return llm["width"] // llm["num_heads"]
    return llm["head_dim"]


def to_hf_config(model_cfg: dict, final_logits_softcap: float | None = None,
                 dtype: str = "float32") -> dict:
    """config.json for a PaliGemma model config ``{"img", "llm"}``.

    Args:
      model_cfg: the model's kwargs.
      final_logits_softcap: PaliGemma 2's final soft-cap to write; None writes
        the hub's 30 (big_vision fine-tunes without it, HF applies it).
      dtype: the stored weights' dtype name.
    """
    img, llm = model_cfg["img"], model_cfg["llm"]
    vocab = llm["vocab_size"]
    hf_vocab = hf_convert.hf_vocab_size(vocab)
    num_image_tokens = (img["image_size"] // img["patch_size"]) ** 2
    is_pg2 = bool(llm.get("post_norms"))
    text = {
        "model_type": "gemma2" if is_pg2 else "gemma",
        "hidden_size": llm["width"],
        "intermediate_size": llm["mlp_dim"],
        "num_hidden_layers": llm["depth"],
        "num_attention_heads": llm["num_heads"],
        "num_key_value_heads": llm["num_kv_heads"],
        "head_dim": llm["head_dim"],
        "vocab_size": hf_vocab,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 8192,
        "num_image_tokens": num_image_tokens,
        "torch_dtype": dtype,
    }
    if is_pg2:
        final = HUB_FINAL_LOGITS_SOFTCAP if final_logits_softcap is None else final_logits_softcap
        text.update(
            attn_logit_softcapping=llm.get("attn_logits_softcap") or None,
            final_logit_softcapping=final or None,
            query_pre_attn_scalar=_query_pre_attn_scalar(llm),
            sliding_window=llm.get("sliding_window") or HUB_SLIDING_WINDOW,
            cache_implementation="hybrid",
        )
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": img["width"],
        "intermediate_size": img["mlp_dim"],
        "num_hidden_layers": img["depth"],
        "num_attention_heads": img["num_heads"],
        "patch_size": img["patch_size"],
        "image_size": img["image_size"],
        "num_image_tokens": num_image_tokens,
        "projection_dim": llm["width"],
        "projector_hidden_act": "gelu_fast",
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
        "torch_dtype": dtype,
    }
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "hidden_size": llm["width"],
        "projection_dim": llm["width"],
        "image_token_index": vocab,
        "vocab_size": hf_vocab,
        "text_config": text,
        "vision_config": vision,
        "torch_dtype": dtype,
    }


def from_hf_config(config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
    """Model config ``{"img", "llm"}`` from config.json and the tensor shapes.

    Widths, depths, MLP sizes, the resolution and the vocabulary come from the
    tensors; head counts, head dim and soft-caps (which 2-D HF weights cannot
    tell) from the config, with transformers' defaults where it is silent.

    Args:
      config: parsed config.json.
      shapes: {canonical HF name: shape}.
    """
    if config.get("model_type") != "paligemma":
        raise ValueError(f"model_type is {config.get('model_type')!r}, not 'paligemma'")
    text, vision = config.get("text_config", {}), config.get("vision_config", {})
    is_pg2 = text.get("model_type") == "gemma2"
    text = {**(_GEMMA2_DEFAULTS if is_pg2 else _GEMMA_DEFAULTS), **text}
    v, t = hf_convert.VISION, hf_convert.TEXT

    def shape(name):
        if name not in shapes:
            raise KeyError(name)
        return shapes[name]

    patch_w = shape(v + "embeddings.patch_embedding.weight")  # [W, 3, p, p]
    num_patches, vit_width = shape(v + "embeddings.position_embedding.weight")
    patch = patch_w[-1]
    def num_layers(prefix):
        return 1 + max((int(n[len(prefix):].split(".")[0]) for n in shapes if n.startswith(prefix)),
                       default=-1)

    vit_depth = num_layers(v + "encoder.layers.")
    img = dict(
        width=vit_width,
        depth=vit_depth,
        mlp_dim=shape(v + "encoder.layers.0.mlp.fc1.weight")[0],
        num_heads=vision.get("num_attention_heads", 12),
        patch_size=patch,
        image_size=round(num_patches**0.5) * patch,
    )
    width = shape(t + "embed_tokens.weight")[1]
    heads = text.get("num_attention_heads", 8)
    head_dim = text.get("head_dim") or width // heads
    query_rule = "rsqrt_head_dim"
    if is_pg2 and text["query_pre_attn_scalar"] != head_dim:
        if text["query_pre_attn_scalar"] != width // heads:
            raise ValueError(
                f"query_pre_attn_scalar {text['query_pre_attn_scalar']} is neither head_dim "
                f"({head_dim}) nor hidden_size/heads ({width // heads})"
            )
        query_rule = "rsqrt_emb_per_head"
    vocab = config.get("image_token_index", config.get("image_token_id"))
    if vocab is None:
        raise ValueError("config.json has no image_token_index")
    llm = dict(
        width=width,
        depth=num_layers(t + "layers."),
        mlp_dim=shape(t + "layers.0.mlp.gate_proj.weight")[0],
        num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads", heads),
        head_dim=head_dim,
        vocab_size=vocab,
    )
    if is_pg2:
        llm.update(
            post_norms=True,
            attn_logits_softcap=float(text["attn_logit_softcapping"] or 0.0),
            final_logits_softcap=float(text["final_logit_softcapping"] or 0.0),
            query_pre_attn_norm=query_rule,
        )
    return {"img": img, "llm": llm}


def write_generation_config(out_dir: str) -> None:
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)


def write_tokenizer_files(out_dir: str, tokenizer_path: str, model_cfg: dict) -> None:
    """tokenizer.model + the JSON files transformers' GemmaTokenizer and the
    PaliGemma processor read. ``<image>`` is an added token with id = vocab."""
    import sentencepiece as spm  # the tokenizer files need it; the export does not

    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    vocab = model_cfg["llm"]["vocab_size"]
    if sp.get_piece_size() != vocab:
        raise ValueError(
            f"tokenizer {tokenizer_path} has {sp.get_piece_size()} pieces, the model {vocab}"
        )
    shutil.copyfile(tokenizer_path, os.path.join(out_dir, "tokenizer.model"))
    names = {"pad": sp.id_to_piece(0), "eos": sp.id_to_piece(1), "bos": sp.id_to_piece(2),
             "unk": sp.id_to_piece(sp.unk_id())}
    special = {f"{k}_token": v for k, v in names.items()}
    added = {
        str(i): {"content": sp.id_to_piece(i), "special": True, "lstrip": False, "rstrip": False,
                 "normalized": False, "single_word": False}
        for i in sorted({0, 1, 2, sp.unk_id()})
    }
    added[str(vocab)] = {"content": "<image>", "special": True, "lstrip": False, "rstrip": False,
                         "normalized": False, "single_word": False}
    files = {
        "tokenizer_config.json": {
            "tokenizer_class": "GemmaTokenizer",
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": 1000000000000000019884624838656,
            "padding_side": "right",
            "processor_class": "PaliGemmaProcessor",
            "added_tokens_decoder": added,
            "additional_special_tokens": ["<image>"],
            **special,
        },
        "special_tokens_map.json": {**special, "additional_special_tokens": ["<image>"]},
        "added_tokens.json": {"<image>": vocab},
    }
    img = model_cfg["img"]
    res = img["image_size"]
    files["preprocessor_config.json"] = {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "PaliGemmaProcessor",
        "do_resize": True,
        "size": {"height": res, "width": res},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_seq_length": (res // img["patch_size"]) ** 2,
    }
    for name, content in files.items():
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(content, f, indent=2)
