"""An HF export also loads in transformers 4.57 (the last 4.x), with the same logits.

transformers 4.x builds PaliGemma's prefix-LM mask only when labels are passed
(its "training" path); the script passes them.

Slow: installs transformers 4.57 into a separate directory that shadows the
5.x install for one subprocess. Run with ``pytest -m slow``.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pg_jax.models import exporter, paligemma, variants

SCRIPT = r"""
import json, sys
import numpy as np, torch, transformers
assert transformers.__version__.startswith("4.57"), transformers.__version__
out_dir, inputs = sys.argv[1], np.load(sys.argv[2])
model, info = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
    out_dir, output_loading_info=True, attn_implementation="eager")
n_img, vocab = int(inputs["n_img"]), int(inputs["vocab"])
b = inputs["text"].shape[0]
ids = np.concatenate([np.full((b, n_img), vocab), inputs["text"]], 1)
types = np.concatenate([np.zeros((b, n_img)), inputs["mask_ar"]], 1)
# 4.x applies the prefix-LM mask only when labels are given ("training");
# without them the whole sequence is bidirectional.
with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types).long(),
                   labels=torch.tensor(ids),
                   attention_mask=torch.ones(ids.shape, dtype=torch.long),
                   pixel_values=torch.tensor(inputs["image"].transpose(0, 3, 1, 2))).logits
print(json.dumps({"version": transformers.__version__,
                  "missing": sorted(info["missing_keys"]),
                  "unexpected": sorted(info["unexpected_keys"]),
                  "max_diff": float(np.abs(logits[:, n_img:, :vocab].numpy()
                                           - inputs["logits"]).max())}))
"""


@pytest.fixture(scope="module")
def transformers_457(tmp_path_factory):
    target = tmp_path_factory.mktemp("transformers457")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(target),
         "transformers==4.57.*", "huggingface-hub<1.0", "tokenizers<0.23"],
        check=True, timeout=900,
    )
    return str(target)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny_pg1", "tiny_pg2"])
def test_export_loads_in_transformers_457(variant, transformers_457, tmp_path):
    cfg = variants.get_config(variant, res=28, vocab_size=64).to_dict()
    cfg["img"].update(width=32, depth=2, mlp_dim=48, num_heads=2)
    cfg["llm"].update(width=32, depth=2, mlp_dim=64, head_dim=8)
    model = paligemma.Model(**cfg)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    text = rng.integers(2, 64, (2, 8)).astype(np.int32)
    mask_ar = np.array([[0] * 5 + [1] * 3] * 2, np.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), image, text, mask_ar)["params"]
    params = jax.tree.map(lambda x: x + 0.2 * rng.normal(size=x.shape).astype(np.float32), params)
    logits = np.asarray(model.apply({"params": params}, image, text, mask_ar)[0])
    # transformers 4.52-4.57 skip Gemma 2's final soft-cap; export without it.
    exporter.save_hf(cfg, params, str(tmp_path / "hf"), final_logits_softcap=0.0)
    np.savez(tmp_path / "inputs.npz", image=image, text=text, mask_ar=mask_ar, logits=logits,
             n_img=model.num_image_tokens, vocab=64)
    env = dict(os.environ, PYTHONPATH=transformers_457)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "hf"),
                          str(tmp_path / "inputs.npz")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(variant, result)
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["max_diff"] < 1e-4
