"""big_vision .npz and HF directory loading: round trips, dtypes, refusals, export CLI."""

import json
import os
import subprocess
import sys
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

import pg_jax
from pg_jax.models import exporter, npz_io, paligemma, variants
from pg_jax.models.npz_io import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(variant="tiny_pg2"):
    cfg = variants.get_config(variant, res=28, vocab_size=64).to_dict()
    cfg["img"].update(width=32, depth=2, mlp_dim=48, num_heads=2)
    cfg["llm"].update(width=32, depth=2, mlp_dim=64, head_dim=8)
    model = paligemma.Model(**cfg)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 3)),
                                    np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32))
    leaves, tree = jax.tree.flatten(variables["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.unflatten(tree, [np.asarray(x) + rng.normal(0, 0.3, x.shape).astype(np.float32)
                                       for x in leaves])
    return cfg, params


def _flat(params):
    return {"/".join(k.key for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def _write_npz(path, flat, prefix="params/"):
    """np.savez as big_vision does (bf16 as |V2)."""
    arrays = {prefix + k: (v.view("V2") if v.dtype == ml_dtypes.bfloat16 else v)
              for k, v in flat.items()}
    np.savez(path, **arrays)


@pytest.mark.parametrize("prefix", ["params/", ""])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_npz_round_trip(tmp_path, prefix, dtype):
    cfg, params = _tiny()
    flat = {k: v.astype(exporter.DTYPES[dtype]) for k, v in _flat(params).items()}
    path = tmp_path / "ckpt.npz"
    _write_npz(path, flat, prefix)
    model, loaded = pg_jax.load(str(path))
    assert dict(model.img) == cfg["img"]
    for key, value in cfg["llm"].items():  # every architecture field recovered from shapes
        assert model.llm[key] == value, key
    for key, value in _flat(loaded).items():
        assert value.dtype == flat[key].dtype, key
        np.testing.assert_array_equal(value, flat[key], err_msg=key)


def test_bf16_load_equals_f32_rounded(tmp_path):
    _, params = _tiny()
    f32 = _flat(params)
    exporter.save_npz(params, str(tmp_path / "bf16.npz"), "bfloat16")
    with zipfile.ZipFile(tmp_path / "bf16.npz") as zf:  # stored like the released files
        with zf.open("params/llm/final_norm/scale.npy") as f:
            version = np.lib.format.read_magic(f)
            assert np.lib.format.read_array_header_1_0(f)[2] == np.dtype("V2") or version
    _, loaded = pg_jax.load(str(tmp_path / "bf16.npz"))
    for key, value in _flat(loaded).items():
        np.testing.assert_array_equal(value, f32[key].astype(ml_dtypes.bfloat16), err_msg=key)
    _, as_f32 = pg_jax.load(str(tmp_path / "bf16.npz"), param_dtype=np.float32)
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(as_f32))


def test_hf_dir_to_npz_and_back(tmp_path):
    cfg, params = _tiny("tiny_pg1")
    exporter.save_hf(cfg, params, str(tmp_path / "hf"))
    model, from_hf = pg_jax.load(str(tmp_path / "hf"))
    exporter.save_npz(from_hf, str(tmp_path / "back.npz"))
    _, back = pg_jax.load(str(tmp_path / "back.npz"))
    for key, value in _flat(back).items():
        np.testing.assert_array_equal(value, _flat(params)[key], err_msg=key)


def test_missing_unexpected_and_wrong_shape_keys_are_named(tmp_path):
    _, params = _tiny()
    flat = _flat(params)
    missing = dict(flat)
    del missing["llm/layers/mlp/linear"]
    _write_npz(tmp_path / "missing.npz", missing)
    with pytest.raises(CheckpointError, match=r"missing key 'llm/layers/mlp/linear'.*\(2, 64, 32\)"):
        pg_jax.load(str(tmp_path / "missing.npz"))

    extra = dict(flat, **{"llm/layers/attn/lora_a": np.zeros((2, 3), np.float32)})
    _write_npz(tmp_path / "extra.npz", extra)
    with pytest.raises(CheckpointError, match="unexpected key 'llm/layers/attn/lora_a'"):
        pg_jax.load(str(tmp_path / "extra.npz"))

    wrong = dict(flat, **{"llm/layers/mlp/linear": np.zeros((2, 60, 32), np.float32)})
    _write_npz(tmp_path / "wrong.npz", wrong)
    with pytest.raises(CheckpointError,
                       match=r"'llm/layers/mlp/linear' has shape \(2, 60, 32\), expected \(2, 64, 32\)"):
        pg_jax.load(str(tmp_path / "wrong.npz"))


def test_not_a_paligemma_checkpoint_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.zeros(3), bias=np.ones(2))
    with pytest.raises(CheckpointError, match="other.npz is not a PaliGemma checkpoint"):
        pg_jax.load(str(tmp_path / "other.npz"))

    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="text.npz: not a readable .npz"):
        pg_jax.load(str(tmp_path / "text.npz"))

    np.savez(tmp_path / "pickle.npz", obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickle"):
        pg_jax.load(str(tmp_path / "pickle.npz"))

    os.makedirs(tmp_path / "empty_dir")
    with pytest.raises(CheckpointError, match="no config.json"):
        pg_jax.load(str(tmp_path / "empty_dir"))

    with pytest.raises(FileNotFoundError):
        pg_jax.load(str(tmp_path / "nope.npz"))


def test_wrong_model_for_checkpoint_is_refused(tmp_path):
    cfg, params = _tiny("tiny_pg1")
    exporter.save_npz(params, str(tmp_path / "pg1.npz"))
    pg2_cfg, _ = _tiny("tiny_pg2")
    with pytest.raises(CheckpointError, match="missing key 'llm/layers/post_attention_norm/scale'"):
        pg_jax.load(str(tmp_path / "pg1.npz"), model_cfg=pg2_cfg)


def test_overrides_are_routed_and_unknown_ones_refused(tmp_path):
    _, params = _tiny()
    exporter.save_npz(params, str(tmp_path / "m.npz"))
    model, _ = pg_jax.load(str(tmp_path / "m.npz"), dtype="bfloat16", final_logits_softcap=30.0,
                           **{"img.remat_policy": "nothing_saveable"})
    assert model.img["dtype"] == model.llm["dtype"] == "bfloat16"
    assert model.llm["final_logits_softcap"] == 30.0
    assert model.img["remat_policy"] == "nothing_saveable" and "remat_policy" not in model.llm
    with pytest.raises(ValueError, match="unknown override 'softcap'"):
        pg_jax.load(str(tmp_path / "m.npz"), softcap=1.0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pg_jax.export", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


def test_export_cli(tmp_path):
    assert "--tokenizer" in _cli("--help").stdout
    _, params = _tiny()
    exporter.save_npz(params, str(tmp_path / "m.npz"))
    out = _cli("--ckpt", str(tmp_path / "m.npz"), "--out", str(tmp_path / "hf"),
               "--dtype", "bfloat16", "--set", "final_logits_softcap=0")
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["text_config"]["final_logit_softcapping"] is None
    assert config["text_config"]["attn_logit_softcapping"] == 50.0
    assert config["image_token_index"] == 64 and config["vocab_size"] == 128
    assert config["torch_dtype"] == "bfloat16"
    bad = _cli("--ckpt", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "nope.npz does not exist" in bad.stderr
    back = _cli("--ckpt", str(tmp_path / "hf"), "--format", "npz", "--out", str(tmp_path / "b.npz"))
    assert back.returncode == 0, back.stderr
    index = npz_io.read_index(str(tmp_path / "b.npz"))
    assert index["llm/embedder/input_embedding"] == ((64, 32), np.dtype(ml_dtypes.bfloat16))


def test_hf_export_with_tokenizer_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from pg_jax.pp import tokenizer

    tok_path = tokenizer.get_default_tokenizer_path()
    vocab = tokenizer.Tokenizer(tok_path).vocab_size
    cfg = variants.get_config("tiny_pg1", res=28, vocab_size=vocab).to_dict()
    cfg["img"].update(width=32, depth=1, mlp_dim=48, num_heads=2)
    cfg["llm"].update(width=32, depth=1, mlp_dim=64, head_dim=8)
    model = paligemma.Model(**cfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 3)),
                                 np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32))["params"]
    exporter.save_hf(cfg, params, str(tmp_path / "hf"), tokenizer=tok_path)
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    image = np.full((40, 40, 3), 255, np.uint8)
    inputs = processor(text="<image>what is the total?", images=image, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids[: model.num_image_tokens] == [vocab] * model.num_image_tokens
    assert ids[model.num_image_tokens] == 2  # bos after the image tokens
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 28, 28)


SHARDED_LOAD = r"""
import sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pg_jax
mesh = Mesh(np.array(jax.devices()).reshape(4), ("data",))

def fsdp(key, shape):  # shard the largest axis divisible by 4, like an FSDP rule
    axes = [i for i, n in sorted(enumerate(shape), key=lambda t: -t[1]) if n % 4 == 0]
    spec = [None] * len(shape)
    if axes:
        spec[axes[0]] = "data"
    return NamedSharding(mesh, P(*spec))

model, params = pg_jax.load(sys.argv[1], shardings=fsdp)
_, ref = pg_jax.load(sys.argv[1])
emb = params["llm"]["embedder"]["input_embedding"]
assert len(emb.sharding.device_set) == 4, emb.sharding
assert emb.addressable_shards[0].data.shape == (16, 32), emb.addressable_shards[0].data.shape
for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
print("ok")
"""


def test_load_straight_into_shardings(tmp_path):
    _, params = _tiny()
    exporter.save_npz(params, str(tmp_path / "m.npz"))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED_LOAD, str(tmp_path / "m.npz")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
