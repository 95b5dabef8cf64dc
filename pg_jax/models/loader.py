"""``load(path) -> (model, params)`` for big_vision .npz files and HF directories.

The architecture is read off the checkpoint itself: PaliGemma 1 vs 2 from the
presence of Gemma 2's post-norms, every width, depth, head count, MLP size,
vocabulary and the resolution from array shapes (``img/pos_embedding`` gives
the number of patches). What shapes cannot tell has a documented default that
a keyword override changes:

==========================  =====================================================
override                    default
==========================  =====================================================
``final_logits_softcap``    .npz: 0 (big_vision fine-tunes PaliGemma 2 without it);
                            HF dir: config.json's (hub: 30)
``attn_logits_softcap``     PaliGemma 2: 50 (both)
``query_pre_attn_norm``     ``"rsqrt_emb_per_head"`` for Gemma 2 27B shapes, else
                            ``"rsqrt_head_dim"``; HF dir: from query_pre_attn_scalar
``sliding_window``          0 (off; HF applies 4096 on alternate layers, which only
                            matters for sequences longer than that, i.e. 896 px)
``dtype``                   ``"float32"`` compute dtype (``"bfloat16"``, ``"float16"``)
``attention_impl``          ``"einsum"`` (``"xla"``, ``"cudnn"``, ``"pallas"``, ``"auto"``)
``remat_policy``            ``"none"`` (a ``jax.checkpoint_policies`` name)
``scan_unroll``             1
==========================  =====================================================

``img.<field>`` / ``llm.<field>`` set a field of one tower only. Loading reads
and casts one array at a time (optionally straight into a sharding), so a 3B
checkpoint is never held twice in host memory.
"""

import json
import os
import re
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pg_jax.models import hf_config, hf_convert, lora, npz_io, paligemma, variants
from pg_jax.models.npz_io import CheckpointError
from pg_jax.models.safetensors_io import SafetensorsFile

LLM_ONLY = ("final_logits_softcap", "attn_logits_softcap", "query_pre_attn_norm", "sliding_window")
BOTH_TOWERS = ("dtype", "attention_impl", "remat_policy", "scan_unroll")
# Gemma 2 27B's shapes, which alone use another query scaling (query_pre_attn_norm).
_GEMMA2_27B = {k: variants.LLMS["gemma2_27b"][k] for k in ("width", "num_heads", "head_dim")}


# ---------------------------------------------------------------------------
# Architecture from big_vision shapes.
# ---------------------------------------------------------------------------
def infer_config(shapes: dict[str, tuple[int, ...]], source: str = "checkpoint") -> dict:
    """Model config ``{"img", "llm"}`` from big_vision keys and shapes."""
    blk = "img/Transformer/encoderblock/"
    needed = ["img/pos_embedding", "img/embedding/kernel", f"{blk}LayerNorm_0/scale",
              f"{blk}MlpBlock_0/Dense_0/kernel", f"{blk}MultiHeadDotProductAttention_0/query/kernel",
              "llm/embedder/input_embedding", "llm/layers/pre_attention_norm/scale",
              "llm/layers/mlp/gating_einsum"]
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise CheckpointError(
            f"{source} is not a PaliGemma checkpoint: no {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''} (it has {len(shapes)} arrays, e.g. "
            f"{', '.join(sorted(shapes)[:3])})"
        )
    _, num_patches, vit_width = shapes["img/pos_embedding"]
    patch = shapes["img/embedding/kernel"][0]
    img = dict(
        width=vit_width,
        depth=shapes[f"{blk}LayerNorm_0/scale"][0],
        mlp_dim=shapes[f"{blk}MlpBlock_0/Dense_0/kernel"][-1],
        num_heads=shapes[f"{blk}MultiHeadDotProductAttention_0/query/kernel"][2],
        patch_size=patch,
        image_size=round(num_patches**0.5) * patch,
    )
    vocab, width = shapes["llm/embedder/input_embedding"]
    if "llm/layers/attn/q_einsum/w" in shapes:
        _, heads, _, head_dim = shapes["llm/layers/attn/q_einsum/w"]
        kv_heads = shapes.get("llm/layers/attn/kv_einsum/w", (0, 0, heads))[2]
    elif "llm/layers/attn/qkv_einsum/w" in shapes:
        _, _, heads, _, head_dim = shapes["llm/layers/attn/qkv_einsum/w"]
        kv_heads = heads
    else:
        raise CheckpointError(f"{source}: no llm/layers/attn/q_einsum/w nor qkv_einsum/w")
    llm = dict(
        width=width,
        depth=shapes["llm/layers/pre_attention_norm/scale"][0],
        mlp_dim=shapes["llm/layers/mlp/gating_einsum"][-1],
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
    )
    if "llm/layers/post_attention_norm/scale" in shapes:  # Gemma 2
        is_27b = all(llm[k] == v for k, v in _GEMMA2_27B.items())
        llm.update(
            post_norms=True,
            attn_logits_softcap=50.0,
            final_logits_softcap=0.0,
            query_pre_attn_norm="rsqrt_emb_per_head" if is_27b else "rsqrt_head_dim",
        )
    return {"img": img, "llm": llm}


def apply_overrides(model_cfg: dict, **overrides) -> dict:
    """Returns a copy of ``model_cfg`` with overrides routed to their tower(s).

    ``lora`` (see `pg_jax.models.lora`) is the model's, not a tower's.
    """
    cfg = {"img": dict(model_cfg["img"]), "llm": dict(model_cfg["llm"])}
    if model_cfg.get("lora"):
        cfg["lora"] = dict(model_cfg["lora"])
    for key, value in overrides.items():
        if key == "lora":
            cfg["lora"] = dict(value) if value else None
        elif key in BOTH_TOWERS:
            cfg["img"][key] = cfg["llm"][key] = value
        elif key in LLM_ONLY:
            cfg["llm"][key] = value
        elif key.split(".", 1)[0] in ("img", "llm") and "." in key:
            tower, field = key.split(".", 1)
            cfg[tower][field] = value
        else:
            raise ValueError(
                f"unknown override {key!r}; known: {', '.join(BOTH_TOWERS + LLM_ONLY)}, "
                "lora, img.<field>, llm.<field>"
            )
    return cfg


def param_shapes(model: paligemma.Model) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat {"img/...": ShapeDtypeStruct} of a model's parameters (no compute)."""
    res = model.img["image_size"]
    args = (jnp.zeros((1, res, res, 3)), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    return flax.traverse_util.flatten_dict(variables["params"], sep="/")


# ---------------------------------------------------------------------------
# Readers: one bv array at a time.
# ---------------------------------------------------------------------------
class _NpzReader:
    def __init__(self, path: str):
        self.path = path
        self.index = npz_io.read_index(path)
        self.shapes = {k: s for k, (s, _) in self.index.items()}

    def model_cfg(self) -> dict:
        return infer_config(self.shapes, self.path)

    def holds(self, cfg: dict, key: str) -> bool:
        return key in self.shapes

    def check(self, cfg: dict, expected: dict) -> None:
        _check_keys(self.path, expected, self.shapes)

    def read_all(self, cfg: dict, expected: dict):
        return npz_io.iter_arrays(self.path, list(expected))


class _HFReader:
    def __init__(self, path: str):
        self.path = path
        config_path = os.path.join(path, "config.json")
        if not os.path.exists(config_path):
            raise CheckpointError(f"{path}: no config.json; not a Hugging Face model directory")
        try:
            with open(config_path, encoding="utf-8") as f:
                self.config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
        if not isinstance(self.config, dict):
            raise CheckpointError(
                f"{config_path}: expected a JSON object, got {type(self.config).__name__}"
            )
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no .safetensors files (only safetensors are read)")
        self.tensors: dict[str, tuple[SafetensorsFile, str]] = {}
        for fname in files:
            sf = SafetensorsFile(os.path.join(path, fname))
            for name in sf.shapes:
                self.tensors[hf_convert.canonical_hf_name(name)] = (sf, name)
        for tied in hf_convert.TIED_HEADS:
            self.tensors.pop(tied, None)  # the output head is the tied embedding
        self.shapes = {n: sf.shapes[orig] for n, (sf, orig) in self.tensors.items()}

    def model_cfg(self) -> dict:
        try:
            return hf_config.from_hf_config(self.config, self.shapes)
        except KeyError as e:
            raise CheckpointError(f"{self.path}: not a PaliGemma checkpoint: no tensor {e}") from e
        except ValueError as e:
            raise CheckpointError(f"{self.path}/config.json: {e}") from e

    def _plan(self, bv_key: str, spec: hf_convert.Spec, shape: jax.ShapeDtypeStruct):
        layers = range(shape.shape[0]) if hf_convert.is_stacked(bv_key) else [None]
        one = jax.ShapeDtypeStruct(shape.shape[1:] if layers[0] is not None else shape.shape,
                                   shape.dtype)
        hf_shapes = jax.eval_shape(spec.to_hf, one)
        return [(i, {part: (t.format(i=i), hf_shapes[part].shape) for part, t in spec.hf.items()})
                for i in layers]

    def holds(self, cfg: dict, key: str) -> bool:
        spec = hf_convert.specs_for(cfg).get(key)
        return spec is not None and all(
            t.format(i=0) in self.shapes for t in spec.hf.values()
        )

    def check(self, cfg: dict, expected: dict) -> None:
        specs = hf_convert.specs_for(cfg)
        wanted = {}
        for bv_key, shape in expected.items():
            for _, parts in self._plan(bv_key, specs[bv_key], shape):
                wanted.update(dict(parts.values()))
        # HF pads the vocabulary for <image> and alignment; any padding is fine.
        emb = hf_convert.TEXT + "embed_tokens.weight"
        rows, width = self.shapes.get(emb, (0, 0))
        if rows > cfg["llm"]["vocab_size"] and width == wanted[emb][1]:
            wanted[emb] = (rows, width)
        _check_keys(self.path, wanted, self.shapes)

    def read_all(self, cfg: dict, expected: dict):
        specs = hf_convert.specs_for(cfg)
        for bv_key, shape in expected.items():
            spec = specs[bv_key]
            arrays = []
            for _, parts in self._plan(bv_key, spec, shape):
                hf = {p: self._get(name) for p, (name, _) in parts.items()}
                arrays.append(spec.from_hf(hf))
            yield bv_key, np.stack(arrays) if hf_convert.is_stacked(bv_key) else arrays[0]

    def _get(self, name: str) -> np.ndarray:
        sf, orig = self.tensors[name]
        return sf.get(orig)


def _check_keys(source: str, expected: dict, actual: dict) -> None:
    """Refuses missing, unexpected or wrong-shape keys, naming each."""
    exp = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    problems = [f"missing key {k!r} (expected shape {exp[k]})" for k in exp if k not in actual]
    problems += [f"unexpected key {k!r} (shape {tuple(actual[k])})" for k in actual if k not in exp]
    problems += [
        f"key {k!r} has shape {tuple(actual[k])}, expected {exp[k]}"
        for k in exp if k in actual and tuple(actual[k]) != exp[k]
    ]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointError(f"{source} does not match the PaliGemma architecture:\n  {shown}{more}")


def _open(path: str):
    if os.path.isdir(path):
        return _HFReader(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return _NpzReader(path)


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------
def read_model_config(path: str, **overrides) -> dict:
    """The model config ``load`` would build, without reading any weights."""
    return apply_overrides(_open(path).model_cfg(), **overrides)


def load(
    path: str,
    *,
    model_cfg: dict | None = None,
    param_dtype=None,
    shardings: jax.sharding.Sharding | dict | Callable | None = None,
    init_missing: tuple[str, ...] = (),
    adapter: str | None = None,
    **overrides,
) -> tuple[paligemma.Model, dict]:
    """Loads a PaliGemma checkpoint.

    Args:
      path: a big_vision ``.npz`` (f32, bf16 as ``|V2``, or f16; keys with or
        without ``params/``) or an HF model directory (single or sharded
        safetensors, hub or transformers 5.x layout).
      model_cfg: expected architecture; default: inferred from the checkpoint.
      param_dtype: cast every array to this dtype; default: keep the stored one.
      shardings: where to put each array as it is read: one Sharding for all, a
        nested dict like the params, or ``fn(key, shape) -> Sharding``. Default:
        the default device.
      init_missing: regexes of parameters the checkpoint may lack (e.g. new LoRA factors):
        those it holds are read, the others are left out of ``params`` for the caller to
        initialise (`pg_jax.state.materialize` does). Every other parameter must be there.
      adapter: a PEFT LoRA adapter directory (``adapter_config.json`` and
        ``adapter_model.safetensors``) to put on the checkpoint: the model gets its LoRA
        config and ``params`` its factors (see `pg_jax.models.peft_io`).
      **overrides: model fields (see the module docstring); ``lora=dict(rank=, alpha=,
        targets=)`` adds LoRA factors, which the checkpoint must hold unless ``adapter`` or
        ``init_missing`` (e.g. ``(lora.FACTOR_PATTERN,)``) says where they come from.

    Returns:
      (model, params): ``model.apply({"params": params}, image, text, mask_ar)``
      returns ``(logits, out)``.
    """
    reader = _open(path)
    cfg = apply_overrides(model_cfg or reader.model_cfg(), **overrides)
    factors = {}
    if adapter:
        from pg_jax.models import peft_io  # only adapter users need it

        cfg["lora"], factors = peft_io.load_adapter(adapter, cfg, expected_lora=cfg.get("lora"))
    model = paligemma.Model(**cfg)
    shapes = param_shapes(model)
    lora.check_targets(model.lora, shapes)
    for key, arr in factors.items():
        if tuple(arr.shape) != tuple(shapes[key].shape):
            raise CheckpointError(
                f"{adapter}: factor {key} has shape {tuple(arr.shape)}, this model's is "
                f"{tuple(shapes[key].shape)}; the adapter is for another model"
            )
    # What to read: everything but the adapter's factors and absent `init_missing` keys.
    expected = {
        k: v for k, v in shapes.items()
        if k not in factors
        and (not any(re.fullmatch(p, k) for p in init_missing) or reader.holds(cfg, k))
    }
    reader.check(cfg, expected)

    if isinstance(shardings, dict):
        flat_shardings = flax.traverse_util.flatten_dict(shardings, sep="/")
        shard_for = lambda k, s: flat_shardings[k]  # noqa: E731
    elif callable(shardings) and not isinstance(shardings, jax.sharding.Sharding):
        shard_for = shardings
    else:
        shard_for = lambda k, s: shardings  # noqa: E731

    flat = {}
    for key, arr in [*reader.read_all(cfg, expected), *factors.items()]:
        if param_dtype is not None:
            arr = arr.astype(param_dtype)
        sharding = shard_for(key, arr.shape)
        flat[key] = jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr)
        del arr  # only one host array alive at a time
    return model, flax.traverse_util.unflatten_dict(flat, sep="/")
