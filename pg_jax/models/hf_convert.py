"""The mapping between big_vision parameter names and Hugging Face's.

Every big_vision array maps to one or more HF tensors (layers stacked on axis 0
in big_vision are one tensor per layer in HF). ``SPECS`` lists, for each
big_vision key, the HF name template and a pair of pure functions converting a
single layer's array both ways. The functions only use ``.transpose``,
``.reshape`` and indexing, so they run on numpy arrays and, for shapes, under
``jax.eval_shape``.

HF names are the hub layout (``vision_tower.vision_model.*``,
``multi_modal_projector.linear.*``, ``language_model.model.*``), which
transformers 4.57 and 5.x both load. Other layouts transformers has written
(``model.*`` prefixes in 5.x ``save_pretrained``) are normalised on import.
"""

import dataclasses
import re
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

VISION = "vision_tower.vision_model."
PROJECTOR = "multi_modal_projector.linear."
TEXT = "language_model.model."


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one big_vision array (one layer of it, if stacked) maps to HF tensors.

    Attributes:
      hf: {part: HF name template}; ``{i}`` is the layer index for stacked arrays.
      to_hf: bv array -> {part: HF array}.
      from_hf: {part: HF array} -> bv array.
    """

    hf: dict[str, str]
    to_hf: Callable
    from_hf: Callable


def _same(name):
    return Spec({"": name}, lambda a: {"": a}, lambda d: d[""])


def _linear(name):
    """A Dense kernel [in, out] <-> torch Linear weight [out, in]."""
    return Spec({"": name}, lambda a: {"": a.T}, lambda d: d[""].T)


def _vit_specs(width: int, heads: int) -> dict[str, Spec]:
    layer = VISION + "encoder.layers.{i}."
    head_dim = width // heads
    specs = {
        "img/embedding/kernel": Spec(
            {"": VISION + "embeddings.patch_embedding.weight"},
            lambda a: {"": a.transpose(3, 2, 0, 1)},
            lambda d: d[""].transpose(2, 3, 1, 0),
        ),
        "img/embedding/bias": _same(VISION + "embeddings.patch_embedding.bias"),
        "img/pos_embedding": Spec(
            {"": VISION + "embeddings.position_embedding.weight"},
            lambda a: {"": a.reshape(a.shape[1], a.shape[2])},
            lambda d: d[""].reshape(1, *d[""].shape),
        ),
        "img/Transformer/encoder_norm/scale": _same(VISION + "post_layernorm.weight"),
        "img/Transformer/encoder_norm/bias": _same(VISION + "post_layernorm.bias"),
        "img/head/kernel": _linear(PROJECTOR + "weight"),
        "img/head/bias": _same(PROJECTOR + "bias"),
    }
    block = "img/Transformer/encoderblock/"
    for ln, hf in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        specs[f"{block}{ln}/scale"] = _same(f"{layer}{hf}.weight")
        specs[f"{block}{ln}/bias"] = _same(f"{layer}{hf}.bias")
    for dense, hf in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        specs[f"{block}MlpBlock_0/{dense}/kernel"] = _linear(f"{layer}mlp.{hf}.weight")
        specs[f"{block}MlpBlock_0/{dense}/bias"] = _same(f"{layer}mlp.{hf}.bias")
    mha = block + "MultiHeadDotProductAttention_0/"
    for bv, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        specs[f"{mha}{bv}/kernel"] = Spec(
            {"": f"{layer}self_attn.{hf}.weight"},
            lambda a: {"": a.reshape(width, heads * head_dim).T},
            lambda d: d[""].T.reshape(width, heads, head_dim),
        )
        specs[f"{mha}{bv}/bias"] = Spec(
            {"": f"{layer}self_attn.{hf}.bias"},
            lambda a: {"": a.reshape(heads * head_dim)},
            lambda d: d[""].reshape(heads, head_dim),
        )
    specs[f"{mha}out/kernel"] = Spec(
        {"": f"{layer}self_attn.out_proj.weight"},
        lambda a: {"": a.reshape(heads * head_dim, width).T},
        lambda d: d[""].T.reshape(heads, head_dim, width),
    )
    specs[f"{mha}out/bias"] = _same(f"{layer}self_attn.out_proj.bias")
    return specs


def _qkv_to_hf(a):  # [N, D, H] -> [N*H, D]
    n, d, h = a.shape
    return a.transpose(0, 2, 1).reshape(n * h, d)


def _qkv_from_hf(w, heads):  # [N*H, D] -> [N, D, H]
    nh, d = w.shape
    return w.reshape(heads, nh // heads, d).transpose(0, 2, 1)


def _llm_specs(llm: dict, hf_vocab: int) -> dict[str, Spec]:
    layer = TEXT + "layers.{i}."
    attn = layer + "self_attn."
    n, k = llm["num_heads"], llm["num_kv_heads"]
    vocab = llm["vocab_size"]

    def pad_rows(a):
        # HF appends <image> (id = vocab) and filler rows; they are never
        # predicted by a big_vision model, so zeros are as good as anything.
        xp = np if isinstance(a, np.ndarray) else jnp  # jnp: shapes under eval_shape
        return {"": xp.pad(a, ((0, hf_vocab - vocab), (0, 0)))}

    specs = {
        "llm/embedder/input_embedding": Spec(
            {"": TEXT + "embed_tokens.weight"}, pad_rows, lambda d: d[""][:vocab]
        ),
        "llm/final_norm/scale": _same(TEXT + "norm.weight"),
        "llm/layers/pre_attention_norm/scale": _same(layer + "input_layernorm.weight"),
        "llm/layers/attn/attn_vec_einsum/w": Spec(  # [N, H, D] <-> [D, N*H]
            {"": attn + "o_proj.weight"},
            lambda a: {"": a.transpose(2, 0, 1).reshape(a.shape[2], -1)},
            lambda d: d[""].reshape(d[""].shape[0], n, -1).transpose(1, 2, 0),
        ),
        "llm/layers/mlp/gating_einsum": Spec(  # [2, D, F] <-> gate, up [F, D]
            {"gate": layer + "mlp.gate_proj.weight", "up": layer + "mlp.up_proj.weight"},
            lambda a: {"gate": a[0].T, "up": a[1].T},
            lambda d: np.stack([d["gate"].T, d["up"].T]),
        ),
        "llm/layers/mlp/linear": _linear(layer + "mlp.down_proj.weight"),
    }
    if n == k:
        specs["llm/layers/attn/qkv_einsum/w"] = Spec(
            {p: f"{attn}{p}_proj.weight" for p in "qkv"},
            lambda a: {p: _qkv_to_hf(a[j]) for j, p in enumerate("qkv")},
            lambda d: np.stack([_qkv_from_hf(d[p], n) for p in "qkv"]),
        )
    else:
        specs["llm/layers/attn/q_einsum/w"] = Spec(
            {"": attn + "q_proj.weight"},
            lambda a: {"": _qkv_to_hf(a)},
            lambda d: _qkv_from_hf(d[""], n),
        )
        specs["llm/layers/attn/kv_einsum/w"] = Spec(
            {"k": attn + "k_proj.weight", "v": attn + "v_proj.weight"},
            lambda a: {"k": _qkv_to_hf(a[0]), "v": _qkv_to_hf(a[1])},
            lambda d: np.stack([_qkv_from_hf(d["k"], k), _qkv_from_hf(d["v"], k)]),
        )
    if llm.get("post_norms"):
        specs["llm/layers/pre_ffw_norm/scale"] = _same(layer + "pre_feedforward_layernorm.weight")
        specs["llm/layers/post_attention_norm/scale"] = _same(layer + "post_attention_layernorm.weight")
        specs["llm/layers/post_ffw_norm/scale"] = _same(layer + "post_feedforward_layernorm.weight")
    else:
        specs["llm/layers/pre_ffw_norm/scale"] = _same(layer + "post_attention_layernorm.weight")
    return specs


def hf_vocab_size(vocab: int) -> int:
    """Rows of HF's embedding: the vocabulary, ``<image>`` (id = vocab), padded to 64.

    For the real 257152-token vocabulary this is 257216.
    """
    return -(-(vocab + 1) // 64) * 64


def specs_for(model_cfg: dict) -> dict[str, Spec]:
    """All specs for a PaliGemma config ``{"img": {...}, "llm": {...}}``."""
    img, llm = model_cfg["img"], model_cfg["llm"]
    return {**_vit_specs(img["width"], img["num_heads"]),
            **_llm_specs(llm, hf_vocab_size(llm["vocab_size"]))}


def is_stacked(bv_key: str) -> bool:
    return "/encoderblock/" in bv_key or bv_key.startswith("llm/layers/")


# Prefixes other transformers versions write, mapped to the hub layout.
_ALIASES = [
    (re.compile(r"^model\.vision_tower\.vision_model\."), VISION),
    (re.compile(r"^model\.vision_tower\."), VISION),
    (re.compile(r"^vision_tower\.(?!vision_model\.)"), VISION),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
    (re.compile(r"^model\.language_model\.model\."), TEXT),
    (re.compile(r"^model\.language_model\."), TEXT),
    (re.compile(r"^language_model\.(?!model\.)"), TEXT),
]
TIED_HEADS = ("lm_head.weight", "language_model.lm_head.weight")


def canonical_hf_name(name: str) -> str:
    for pattern, replacement in _ALIASES:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return name
