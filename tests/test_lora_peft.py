"""PEFT LoRA adapters both ways, with transformers + peft as the oracle.

An adapter pg_jax writes must load with ``peft.PeftModel.from_pretrained`` onto the base HF
model and give pg_jax's logits (float32, 1e-4); an adapter PEFT writes must load into pg_jax
(``pg_jax.load(base, adapter=DIR)``) and give PEFT's.
"""

import re

import numpy as np
import pytest

import pg_jax
from pg_jax import optim
from pg_jax.models import loader, lora, peft_io
from pg_jax.models.npz_io import CheckpointError
from tests import hf_oracle
from tests.test_lora import ATOL, _inputs, _with_factors

pytest.importorskip("peft")
pytest.importorskip("transformers")

# Each case with the targets it is tested with: q + kv (and the MLP), qkv, and PaliGemma 2.
TARGETS = {"pg1_mqa": "attn_mlp", "pg1_mha": "attn", "pg2_gqa_caps": "attn_mlp"}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def hf_base(request, tmp_path_factory):
    case = hf_oracle.CASES[request.param]
    hf_model = hf_oracle.make_hf_model(case)
    path = tmp_path_factory.mktemp(case.name)
    hf_model.save_pretrained(path)
    return case, str(path)


def _hf_logits(hf_model, case, image, text, mask_ar, n_img):
    import torch

    with torch.no_grad():
        out = hf_model(**hf_oracle.hf_inputs(image, text, mask_ar, n_img)).logits
    return out[:, n_img:, : hf_oracle.VOCAB].numpy()


def test_peft_adapter_export_loads_in_peft_with_the_same_logits(hf_base, tmp_path):
    from peft import PeftModel
    from transformers import PaliGemmaForConditionalGeneration

    case, path = hf_base
    targets = TARGETS[case.name]
    base_model, params = pg_jax.load(path)
    cfg = {"img": dict(base_model.img), "llm": dict(base_model.llm)}
    model, p = _with_factors(cfg, params, dict(rank=3, alpha=6.0, targets=targets), b_std=0.1)
    factors = {k: v for k, v in optim.flatten(p).items() if k.endswith(lora.SUFFIXES)}
    peft_io.save_adapter(factors, model.lora, cfg, str(tmp_path / "adapter"))

    hf = PaliGemmaForConditionalGeneration.from_pretrained(path).eval()
    hf.set_attn_implementation("eager") if hasattr(hf, "set_attn_implementation") else None
    peft_model = PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    image, text, mask_ar = _inputs(case.image_size, vocab=hf_oracle.VOCAB)
    ours, _ = model.apply({"params": p}, image, text, mask_ar)
    base, _ = base_model.apply({"params": params}, image, text, mask_ar)
    theirs = _hf_logits(peft_model, case, image, text, mask_ar, model.num_image_tokens)
    assert np.abs(np.asarray(ours) - np.asarray(base)).max() > 0.05
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=ATOL, rtol=0)

    # And back: the written adapter reads into the same factors.
    model2, p2 = pg_jax.load(path, adapter=str(tmp_path / "adapter"))
    assert model2.lora["rank"] == 3 and model2.lora["alpha"] == 6.0
    again, _ = model2.apply({"params": p2}, image, text, mask_ar)
    np.testing.assert_allclose(np.asarray(again), np.asarray(ours), atol=1e-5, rtol=0)


def test_adapter_trained_with_peft_loads_into_pg_jax(hf_base, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import PaliGemmaForConditionalGeneration

    case, path = hf_base
    hf = PaliGemmaForConditionalGeneration.from_pretrained(path).eval()
    hf.set_attn_implementation("eager") if hasattr(hf, "set_attn_implementation") else None
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|k_proj|"
                        r"v_proj|o_proj|gate_proj|up_proj|down_proj)")
    peft_model = get_peft_model(hf, config)
    torch.manual_seed(3)
    with torch.no_grad():  # as if trained: B away from zero
        for name, prm in peft_model.named_parameters():
            if "lora_B" in name:
                prm.normal_(0, 0.1)
    peft_model.save_pretrained(str(tmp_path / "adapter"))

    model, params = pg_jax.load(path, adapter=str(tmp_path / "adapter"))
    assert set(model.lora["targets"]) == {
        re.escape(k) for k in lora.LAYOUTS
        if k + "_lora_a" in loader.param_shapes(model)
    }
    image, text, mask_ar = _inputs(case.image_size, vocab=hf_oracle.VOCAB)
    ours, _ = model.apply({"params": params}, image, text, mask_ar)
    theirs = _hf_logits(peft_model.eval(), case, image, text, mask_ar, model.num_image_tokens)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=ATOL, rtol=0)


def test_bad_adapters_are_refused_by_name(hf_base, tmp_path):
    _, path = hf_base
    base_model, params = pg_jax.load(path)
    cfg = {"img": dict(base_model.img), "llm": dict(base_model.llm)}
    model, p = _with_factors(cfg, params, dict(rank=2, alpha=2.0))
    factors = {k: v for k, v in optim.flatten(p).items() if k.endswith(lora.SUFFIXES)}
    out = str(tmp_path / "adapter")
    peft_io.save_adapter(factors, model.lora, cfg, out)
    with pytest.raises(CheckpointError, match="rank r=2 but config lora.rank=8"):
        pg_jax.load(path, adapter=out, lora=dict(rank=8))
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        pg_jax.load(path, adapter=str(tmp_path))
    # An adapter for a model of other sizes: a factor of twice the input width, named.
    first = sorted(k for k in factors if k.endswith("_lora_a"))[0]
    other = dict(factors, **{first: np.concatenate([factors[first]] * 2, axis=-2)})
    peft_io.save_adapter(other, model.lora, cfg, str(tmp_path / "other"))
    with pytest.raises(CheckpointError, match=r"_proj\.lora_A\.weight .*another model"):
        pg_jax.load(path, adapter=str(tmp_path / "other"))
