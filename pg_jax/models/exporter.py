"""Writes PaliGemma params as a big_vision .npz or a Hugging Face model directory.

Both writers stream: each output array is converted from the params (host or
device arrays) just before it is written, so a 3B model is never copied whole.
"""

import json
import os

import flax
import jax
import ml_dtypes
import numpy as np

from pg_jax.models import hf_config, hf_convert, npz_io, safetensors_io

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _np_dtype(dtype):
    if dtype is None:
        return None
    return np.dtype(DTYPES.get(dtype, dtype))


def _host(x, dtype):
    arr = np.asarray(jax.device_get(x))
    return arr if dtype is None else arr.astype(dtype)


def save_npz(params: dict, path: str, dtype=None) -> None:
    """big_vision .npz with ``params/`` keys; bfloat16 stored as ``|V2``.

    Args:
      params: {"img": ..., "llm": ...}.
      path: output file (written atomically).
      dtype: "float32", "bfloat16", "float16" or None to keep each array's.
    """
    dtype = _np_dtype(dtype)
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    npz_io.save(path, ((k, _host(v, dtype)) for k, v in flat.items()))


def save_hf(
    model_cfg: dict,
    params: dict,
    out_dir: str,
    *,
    dtype=None,
    tokenizer: str | None = None,
    final_logits_softcap: float | None = None,
    shard_bytes: int = safetensors_io.SHARD_BYTES,
) -> list[str]:
    """A directory ``PaliGemmaForConditionalGeneration.from_pretrained`` loads.

    Args:
      model_cfg: {"img": ..., "llm": ...} model kwargs.
      params: matching params.
      out_dir: created if needed.
      dtype: weights' dtype name; default float32 unless all params are bf16/f16.
      tokenizer: a SentencePiece .model to include with the tokenizer and
        preprocessor files, or None.
      final_logits_softcap: PaliGemma 2 config value; None writes the hub's 30.
      shard_bytes: safetensors shard size (transformers' 5 GB by default).

    Returns:
      The written safetensors file names.
    """
    os.makedirs(out_dir, exist_ok=True)
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    if dtype is None:
        dtypes = {np.dtype(v.dtype) for v in flat.values()}
        dtype = dtypes.pop().name if len(dtypes) == 1 else "float32"
    np_dtype = _np_dtype(dtype)
    specs = hf_convert.specs_for(model_cfg)
    unknown = set(flat) - set(specs)
    if unknown:
        raise ValueError(f"params have keys with no HF mapping: {sorted(unknown)[:5]}")

    # Plan every HF tensor (name, shape) from shapes alone, then fill on demand.
    plan, source = [], {}
    for bv_key, spec in specs.items():
        arr = flat[bv_key]
        layers = range(arr.shape[0]) if hf_convert.is_stacked(bv_key) else [None]
        one = jax.ShapeDtypeStruct(arr.shape[1:] if layers[0] is not None else arr.shape, arr.dtype)
        hf_shapes = jax.eval_shape(spec.to_hf, one)
        for i in layers:
            for part, template in spec.hf.items():
                name = template.format(i=i)
                plan.append((name, hf_shapes[part].shape, np_dtype))
                source[name] = (bv_key, i, part)

    cache = {}

    def fetch(name):
        bv_key, i, part = source[name]
        if (bv_key, i) not in cache:  # k/v and gate/up come from one bv array
            cache.clear()
            arr = flat[bv_key] if i is None else flat[bv_key][i]
            cache[(bv_key, i)] = specs[bv_key].to_hf(_host(arr, None))
        return cache[(bv_key, i)][part].astype(np_dtype)

    files = safetensors_io.write_sharded(out_dir, plan, fetch, shard_bytes)
    config = hf_config.to_hf_config(model_cfg, final_logits_softcap, np_dtype.name)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    hf_config.write_generation_config(out_dir)
    if tokenizer:
        hf_config.write_tokenizer_files(out_dir, tokenizer, model_cfg)
    return files
