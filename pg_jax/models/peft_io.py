"""LoRA factors as PEFT adapters (transformers + PEFT) and as the run's ``lora.npz``.

A PEFT LoRA adapter directory holds ``adapter_config.json`` (``r``, ``lora_alpha``,
``target_modules``, ...) and ``adapter_model.safetensors`` with, per adapted torch Linear,
``base_model.model.<module>.lora_A.weight [r, in]`` and ``...lora_B.weight [out, r]``, where
``<module>`` is the module's name in transformers' ``PaliGemmaForConditionalGeneration``
(``model.language_model.layers.3.self_attn.q_proj``). Its delta is ``(alpha / r) B A``.

pg_jax keeps one factor pair per big_vision weight, stacked over layers (`pg_jax.models.lora`):
``A [L, parts, inputs, r]``, ``B [L, parts, r, outputs]``. A part is one HF projection (k and v
of ``kv_einsum``, gate and up of ``gating_einsum``), in the order of `hf_convert`'s spec; the
inputs and outputs flatten in the weight's axis order, which is the order of HF's matrix rows
and columns (the same reshape `hf_convert` does to the weights). So the conversion is a
reshape and a transpose per layer and part, both ways, and exact.

``save_adapter`` writes that layout with safetensors' numpy API, so exporting needs neither
torch nor peft; ``peft.PeftModel.from_pretrained(hf_model, DIR)`` loads it onto
the HF export of the base checkpoint.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import safetensors.numpy

from pg_jax.models import hf_convert, lora
from pg_jax.models.npz_io import CheckpointError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
# transformers' module names for the hub layout's text-model prefix.
_MODULE_PREFIX = {hf_convert.TEXT: "model.language_model."}


def _module_name(hf_weight_name: str) -> str:
    """Hub tensor name -> transformers module name: ``...q_proj.weight`` -> module path."""
    name = hf_weight_name.removesuffix(".weight")
    for hub, module in _MODULE_PREFIX.items():
        if name.startswith(hub):
            return module + name[len(hub):]
    raise ValueError(f"LoRA on {hf_weight_name} is not supported in PEFT adapters")


def _parts(model_cfg: dict, key: str) -> list[str]:
    """The HF tensor name templates of a weight's parts, in part order."""
    return list(hf_convert.specs_for(model_cfg)[key].hf.values())


def to_peft(factors: dict, model_cfg: dict) -> dict[str, np.ndarray]:
    """Stacked pg_jax factors -> {PEFT tensor name: array}."""
    out = {}
    for key, layout in lora.LAYOUTS.items():
        if key + "_lora_a" not in factors:
            continue
        a, b = np.asarray(factors[key + "_lora_a"]), np.asarray(factors[key + "_lora_b"])
        rank = a.shape[-1]
        templates = _parts(model_cfg, key)
        for i in range(a.shape[0]):
            for j, template in enumerate(templates):
                a_ij = a[i, j] if layout.parts else a[i]  # [inputs..., r]
                b_ij = b[i, j] if layout.parts else b[i]  # [r, outputs...]
                module = PREFIX + _module_name(template.format(i=i))
                out[module + ".lora_A.weight"] = np.ascontiguousarray(a_ij.reshape(-1, rank).T)
                out[module + ".lora_B.weight"] = np.ascontiguousarray(b_ij.reshape(rank, -1).T)
    return out


def from_peft(tensors: dict, model_cfg: dict, lora_cfg: dict, source: str) -> dict:
    """{PEFT tensor name: array} -> stacked pg_jax factors; refuses what does not fit, by name."""
    from pg_jax.models import loader, paligemma  # loader imports this module

    model = paligemma.Model(**{**model_cfg, "lora": lora_cfg})
    shapes = loader.param_shapes(model)
    rank = lora_cfg["rank"]
    factors, used = {}, set()
    for key, layout in lora.LAYOUTS.items():
        if key + "_lora_a" not in shapes:
            continue
        a_shape, b_shape = shapes[key + "_lora_a"].shape, shapes[key + "_lora_b"].shape
        templates = _parts(model_cfg, key)
        a_layers, b_layers = [], []
        for i in range(a_shape[0]):
            a_parts, b_parts = [], []
            for template in templates:
                module = PREFIX + _module_name(template.format(i=i))
                names = (module + ".lora_A.weight", module + ".lora_B.weight")
                missing = [n for n in names if n not in tensors]
                if missing:
                    raise CheckpointError(f"{source}: no tensor {missing[0]} (this model's "
                                          f"{key} is a LoRA target)")
                a_hf, b_hf = (np.asarray(tensors[n], np.float32) for n in names)
                one_a = a_shape[2:] if layout.parts else a_shape[1:]
                one_b = b_shape[2:] if layout.parts else b_shape[1:]
                if a_hf.shape != (rank, int(np.prod(one_a[:-1]))) or \
                        b_hf.shape != (int(np.prod(one_b[1:])), rank):
                    raise CheckpointError(
                        f"{source}: {names[0]} {a_hf.shape} / lora_B {b_hf.shape} do not fit "
                        f"this model's {key} at rank {rank}; the adapter is for another model"
                    )
                a_parts.append(a_hf.T.reshape(one_a))
                b_parts.append(b_hf.T.reshape(one_b))
                used.update(names)
            a_layers.append(np.stack(a_parts) if layout.parts else a_parts[0])
            b_layers.append(np.stack(b_parts) if layout.parts else b_parts[0])
        factors[key + "_lora_a"] = np.stack(a_layers)
        factors[key + "_lora_b"] = np.stack(b_layers)
    extra = sorted(set(tensors) - used)
    if extra:
        raise CheckpointError(f"{source}: {len(extra)} adapter tensor(s) this model's LoRA "
                              f"targets do not use, e.g. {extra[:3]}")
    return factors


def _targets_regex(factors: dict, model_cfg: dict) -> str:
    """PEFT ``target_modules`` for the adapted projections (a full-match regex)."""
    names = set()
    for key in lora.LAYOUTS:
        if key + "_lora_a" in factors:
            names.update(t.rsplit(".", 2)[-2] for t in _parts(model_cfg, key))
    return r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(sorted(names)) + ")"


def save_adapter(factors: dict, lora_cfg: dict, model_cfg: dict, out_dir: str,
                 base_model: str = "") -> list[str]:
    """Writes a PEFT LoRA adapter directory; returns the file names written."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = to_peft(factors, model_cfg)
    safetensors.numpy.save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE),
                                metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model or None,
        "r": int(lora_cfg["rank"]),
        "lora_alpha": float(lora_cfg["alpha"]),
        "lora_dropout": float(lora_cfg.get("dropout", 0.0)),
        "target_modules": _targets_regex(factors, model_cfg),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    return [CONFIG_FILE, WEIGHTS_FILE]


def load_adapter(adapter_dir: str, model_cfg: dict, expected_lora: dict | None = None):
    """Reads a PEFT LoRA adapter for a model.

    Args:
      adapter_dir: the adapter directory.
      model_cfg: the base model's config ({"img", "llm"}).
      expected_lora: the run's LoRA config, if it has one: the adapter's rank must match.

    Returns:
      (lora config dict, stacked factors {key: float32 array}).
    """
    config_path = os.path.join(adapter_dir, CONFIG_FILE)
    weights_path = os.path.join(adapter_dir, WEIGHTS_FILE)
    for path in (config_path, weights_path):
        if not os.path.exists(path):
            raise CheckpointError(f"{adapter_dir}: no {os.path.basename(path)}; not a PEFT "
                                  "adapter directory")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA")
    for flag in ("use_dora", "use_rslora"):
        if config.get(flag):
            raise CheckpointError(f"{config_path}: {flag} adapters are not supported")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CheckpointError(f"{config_path}: per-module ranks/alphas are not supported")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    if expected_lora and int(expected_lora["rank"]) != rank:
        raise CheckpointError(f"{adapter_dir}: adapter rank r={rank} but config lora.rank="
                              f"{expected_lora['rank']}")
    tensors = safetensors.numpy.load_file(weights_path)
    names = {re.sub(r"\.lora_[AB]\.weight$", "", k) for k in tensors}  # adapted modules
    targets = []
    for key in lora.LAYOUTS:
        spec = hf_convert.specs_for(model_cfg).get(key)
        if spec and any(PREFIX + _module_name(t.format(i=0)) in names for t in spec.hf.values()):
            targets.append(re.escape(key))
    if not targets:
        raise CheckpointError(f"{adapter_dir}: none of its {len(names)} adapted modules (e.g. "
                              f"{sorted(names)[:2]}) is a weight of this model LoRA can adapt")
    lora_cfg = {"rank": rank, "alpha": alpha, "targets": tuple(targets)}
    return lora_cfg, from_peft(tensors, model_cfg, lora_cfg, adapter_dir)


# The run's own file: the factors under their pg_jax names, the configs as JSON.
def save_factors(path: str, factors: dict, lora_cfg: dict, model_cfg: dict) -> None:
    meta = json.dumps({"lora": dict(lora_cfg, targets=list(lora_cfg["targets"])),
                       "model": {"img": dict(model_cfg["img"]), "llm": dict(model_cfg["llm"])}})
    np.savez(path, __meta__=np.asarray(meta),
             **{k: np.asarray(v, np.float32) for k, v in factors.items()})


def read_factors(path: str) -> tuple[dict, dict, dict]:
    """(factors, lora config, model config) of a `save_factors` file."""
    with np.load(path, allow_pickle=False) as f:
        if "__meta__" not in f.files:
            raise CheckpointError(f"{path}: not a pg_jax lora.npz (no __meta__ entry)")
        meta = json.loads(str(f["__meta__"]))
        factors = {k: f[k] for k in f.files if k != "__meta__"}
    return factors, meta["lora"], meta["model"]
