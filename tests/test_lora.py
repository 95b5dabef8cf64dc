"""LoRA: the factors' forward, merging, partial loading, the trainable set and bad targets.

PEFT adapters (both ways, against transformers + peft) are in tests/test_lora_peft.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pg_jax
from pg_jax import optim
from pg_jax.models import exporter, loader, lora, paligemma
from tests import tiny_model

ATOL = 1e-4


def _inputs(res, batch=2, text_len=9, vocab=90, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)
    text = rng.integers(3, vocab, (batch, text_len)).astype(np.int32)
    text[:, 0] = 2
    mask_ar = np.zeros((batch, text_len), np.int32)
    mask_ar[:, 5:] = 1
    return image, text, mask_ar


def _with_factors(model_cfg, params, lora_cfg, seed=1, b_std=0.2):
    """(LoRA model, params with random A and B: a non-zero delta to test against)."""
    model = paligemma.Model(**model_cfg, lora=lora_cfg)
    shapes = loader.param_shapes(model)
    rng = np.random.default_rng(seed)
    flat = optim.flatten(params)
    for k, s in shapes.items():
        if k.endswith(lora.SUFFIXES):
            std = b_std if k.endswith("_lora_b") else 0.3
            flat[k] = jnp.asarray(rng.normal(0, std, s.shape), jnp.float32)
    return model, optim.unflatten(flat)


@pytest.fixture(scope="module", params=["tiny_pg1", "tiny_pg2"])
def tiny(request):
    model, params = tiny_model.make(request.param)
    return {"img": dict(model.img), "llm": dict(model.llm)}, model, params


def test_factors_change_the_output_and_merging_gives_the_same_model(tiny):
    cfg, base_model, params = tiny
    targets = "all" if cfg["llm"].get("post_norms") else "attn"
    model, p = _with_factors(cfg, params, dict(rank=4, alpha=8.0, targets=targets))
    image, text, mask_ar = _inputs(cfg["img"]["image_size"])
    with_factors, _ = model.apply({"params": p}, image, text, mask_ar)
    merged, _ = base_model.apply({"params": lora.merge(p, model.lora)}, image, text, mask_ar)
    base, _ = base_model.apply({"params": params}, image, text, mask_ar)
    assert float(jnp.abs(with_factors - base).max()) > 0.1  # the factors do something
    np.testing.assert_allclose(with_factors, merged, atol=ATOL, rtol=1e-4)
    # The decode loop merges too: greedy decoding equals the merged plain model's.
    batch = {"image": image, "text": text[:, :5]}
    np.testing.assert_array_equal(pg_jax.decode(model, p, batch, max_decode_len=6),
                                  pg_jax.decode(base_model, lora.merge(p, model.lora), batch,
                                                max_decode_len=6))


def test_step_zero_is_the_base_model_and_only_factors_train(tmp_path):
    """Partial load: the base from the checkpoint, the factors initialised (B = 0)."""
    from pg_jax import sharding
    from pg_jax import state as state_lib
    from pg_jax import step as step_lib

    base_model, params = tiny_model.make("tiny_pg1")
    ckpt = str(tmp_path / "base.npz")
    exporter.save_npz(params, ckpt)
    cfg = {"img": dict(base_model.img), "llm": dict(base_model.llm)}
    model = paligemma.Model(**cfg, lora=dict(rank=2, alpha=4.0))
    config = _opt_config(optim.PRESETS["lora"])
    opt = optim.make(config, loader.param_shapes(model), total_steps=3)
    assert opt.trainable and all(k.endswith(lora.SUFFIXES) for k in opt.trainable)
    mesh = sharding.make_mesh([("data", -1)])
    plan = state_lib.plan(model, opt, mesh, [(".*", "replicate()")], frozen_dtype="float32",
                          loss_scale=False)
    state = state_lib.materialize(plan, model, init_path=ckpt, init_missing=(lora.FACTOR_PATTERN,))
    # Optimizer state exists for the factors only.
    opt_keys = {str(getattr(k, "key", "")) for path, _ in
                jax.tree_util.tree_flatten_with_path(state["opt"])[0] for k in path}
    assert {k for k in opt_keys if "/" in k} == set(opt.trainable)
    image, text, mask_ar = _inputs(model.img["image_size"])
    ours, _ = model.apply({"params": state["params"]}, image, text, mask_ar)
    base, _ = base_model.apply({"params": params}, image, text, mask_ar)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(base))  # B = 0: exactly the base

    update = jax.jit(step_lib.make_update_fn(model, opt, loss_len=3))
    batch = {"image": image, "text": text, "mask_ar": mask_ar, "mask_loss": mask_ar,
             "mask_input": np.ones_like(text)}
    before = optim.flatten(state["params"])
    before = {k: np.asarray(v) for k, v in before.items()}
    for _ in range(2):
        state, _ = update(state, jax.random.PRNGKey(0), batch)
    after = {k: np.asarray(v) for k, v in optim.flatten(state["params"]).items()}
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed and all(k.endswith(lora.SUFFIXES) for k in changed), changed
    assert any(k.endswith("_lora_b") for k in changed)


def _opt_config(freeze_rules):
    import ml_collections

    c = ml_collections.ConfigDict()
    sched = {"decay_type": "constant"}
    c.schedule = [(r, dict(sched) if t else None) for r, t in freeze_rules]
    c.optax_name, c.optax, c.lr, c.wd, c.wd_mults, c.grad_clip_norm = "adam", {}, 1e-2, 0.0, [], 0.0
    return c


def test_targets_that_match_nothing_or_unadaptable_weights_are_refused():
    base_model, _ = tiny_model.make("tiny_pg1")
    cfg = {"img": dict(base_model.img), "llm": dict(base_model.llm)}
    shapes = loader.param_shapes(paligemma.Model(**cfg))
    with pytest.raises(lora.LoraError, match="llm/layers/nope. matches no weight"):
        lora.check_targets(lora.normalize(dict(rank=2, targets=("llm/layers/nope",))), shapes)
    with pytest.raises(lora.LoraError, match="pre_attention_norm.*cannot adapt"):
        lora.check_targets(lora.normalize(dict(rank=2, targets=("llm/layers/pre_attention_norm/scale",))),
                           shapes)
    with pytest.raises(lora.LoraError, match="rank"):
        lora.normalize(dict(rank=0))


def test_freeze_lora_run_exports_merged_weights_and_a_peft_adapter(synth, ckpt, tmp_path):
    """configs/docvqa.py:freeze=lora end to end: only the targeted weights move (through their
    factors), params.npz is the merged plain model, and `export --format peft` takes the run."""
    from configs import docvqa
    from pg_jax import export, train

    cfg = docvqa.get_config(f"mode=runlocal,res=28,text_len=16,data={synth}/docvqa,"
                            f"ckpt={ckpt},freeze=lora,lora_rank=2")
    cfg.total_steps, cfg.evals, cfg.export_hf, cfg.progress_bar = 3, {}, False, False
    cfg.dtype = "float32"
    wd = str(tmp_path / "run")
    train.train(cfg, wd)

    base, merged = np.load(ckpt), np.load(f"{wd}/params.npz")
    assert sorted(base.files) == sorted(merged.files)  # a plain PaliGemma: no factor keys
    moved = sorted(k for k in base.files if not np.array_equal(base[k], merged[k]))
    targeted = {"params/" + k for k in lora.LAYOUTS if "attn" in k}
    assert moved and set(moved) <= targeted, moved

    from pg_jax.models import peft_io

    factors, lora_cfg, _ = peft_io.read_factors(f"{wd}/lora.npz")
    assert lora_cfg["rank"] == 2 and all(v.dtype == np.float32 for v in factors.values())
    export.main(["--ckpt", wd, "--format", "peft", "--out", str(tmp_path / "adapter")])
    with open(tmp_path / "adapter" / "adapter_config.json") as f:
        assert json.load(f)["r"] == 2


def test_dropout_draws_per_rng_is_unbiased_and_only_in_training():
    """``lora.dropout``: masks come from the "dropout" rng only (decoding and evaluation pass
    none, so they equal the dropout-free model); averaged over masks the factors' effect is the
    dropout-free one (inverted dropout's 1/(1-p)); the train step draws them from its key."""
    from pg_jax import step as step_lib

    base_model, params = tiny_model.make("tiny_pg1")
    cfg = {"img": dict(base_model.img), "llm": dict(base_model.llm)}
    no_drop, p = _with_factors(cfg, params, dict(rank=4, alpha=8.0, targets="all"), b_std=2e-4)
    model = paligemma.Model(**cfg, lora=dict(rank=4, alpha=8.0, targets="all", dropout=0.5))
    image, text, mask_ar = _inputs(cfg["img"]["image_size"])

    def out(m, key=None):
        rngs = None if key is None else {"dropout": key}
        return m.apply({"params": p}, image, text, mask_ar, rngs=rngs)[0]

    det = out(no_drop)
    np.testing.assert_array_equal(out(model), det)  # no rng: deterministic, as in decoding
    one, two = out(model, jax.random.PRNGKey(1)), out(model, jax.random.PRNGKey(2))
    assert float(jnp.abs(one - det).max()) > 1e-5 and float(jnp.abs(one - two).max()) > 1e-5
    base = base_model.apply({"params": params}, image, text, mask_ar)[0]
    draws = jax.jit(jax.vmap(lambda k: out(model, k)))(jax.random.split(jax.random.PRNGKey(3), 512))
    mean_effect, effect = jnp.mean(draws, 0) - base, det - base
    # Tiny B: the output is close to linear in the factors, so E[effect] ~ the dropout-free
    # effect, up to the mean of 512 masks' noise; without the 1/(1-p) rescale it is 0.5 off.
    assert float(jnp.linalg.norm(mean_effect - effect) / jnp.linalg.norm(effect)) < 0.15

    opt = optim.make(_opt_config(optim.PRESETS["lora"]), loader.param_shapes(model), total_steps=3)
    update = jax.jit(step_lib.make_update_fn(model, opt, loss_len=3))
    trainable, frozen = optim.split(p, opt.trainable)
    state = {"params": p, "opt": opt.tx.init(trainable)}
    batch = {"image": image, "text": text, "mask_ar": mask_ar, "mask_loss": mask_ar,
             "mask_input": np.ones_like(text)}
    loss = lambda key: float(update(state, jax.random.PRNGKey(key), batch)[1]["training_loss"])  # noqa: E731
    assert loss(0) == loss(0) and loss(0) != loss(1)
    with pytest.raises(lora.LoraError, match="dropout"):
        lora.normalize(dict(rank=2, dropout=1.0))
