"""Run in a subprocess with 8 fake CPU devices: the FSDP-sharded and the data-parallel
(replicated) steps equal one device, for attention-only training and for LoRA training with
dropout on int8 frozen weights."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

jax.config.update("jax_threefry_partitionable", True)

from pg_jax import optim, sharding
from pg_jax import step as step_lib
from pg_jax.models import quant
from tests import tiny_setup


def run(devices, strategy, freeze="attn", frozen_int8=False):
    mesh = sharding.make_mesh([("data", -1)], devices)
    model = tiny_setup.model()
    if freeze == "lora":
        # Dropout: the masks come from the step's key, the same however the batch is split.
        model = model.clone(lora={"rank": 4, "alpha": 8.0, "targets": "attn_mlp",
                                  "dropout": 0.1})
    params = tiny_setup.params(model)
    if frozen_int8:
        flat = optim.flatten(params)
        params = optim.unflatten({k: quant.quantize(k, v) if k in quant.QUANTIZABLE else v
                                  for k, v in flat.items()})
    # SGD: linear in the gradient, so float reassociation across devices stays tiny (Adam's
    # g / sqrt(v) turns ~0 gradients into +-lr and amplifies it).
    opt = optim.make(tiny_setup.opt_config(freeze, optax_name="sgd", lr=0.5), params, 10)
    p_sh = sharding.infer_sharding(params, strategy, mesh)
    params = jax.device_put(params, p_sh)
    tr = optim.split(params, opt.trainable)[0]
    o_sh = sharding.infer_sharding(jax.eval_shape(opt.tx.init, tr), strategy, mesh)
    state = {"params": params, "opt": jax.jit(opt.tx.init, out_shardings=o_sh)(tr)}
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    fn = jax.jit(
        step_lib.make_update_fn(model, opt, loss_len=6),
        donate_argnums=(0,),
        out_shardings=(shardings, None),
    )
    losses = []
    for i in range(3):
        batch = sharding.global_batch(tiny_setup.batch(b=8, seed=i), mesh)
        state, m = fn(state, jax.random.PRNGKey(0), batch)
        losses.append(float(m["training_loss"]))
    n_sharded = sum(
        any(a is not None for a in x.sharding.spec) for x in jax.tree_util.tree_leaves(state)
    )
    return losses, jax.device_get(optim.flatten(state["params"])), n_sharded


def main():
    assert jax.device_count() == 8, jax.devices()
    strategy = [(".*", 'fsdp(axis="data", min_size_mb=0)')]
    l8, p8, n8 = run(jax.devices(), strategy)
    l1, p1, _ = run(jax.devices()[:1], strategy)
    assert n8 > 10, f"only {n8} sharded leaves"
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for k in p1:
        np.testing.assert_allclose(p8[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The config's default: weights replicated, the batch split (data parallel).
    lr, pr, nr = run(jax.devices(), [(".*", "replicate()")])
    assert nr == 0, f"{nr} sharded leaves under replicate()"
    np.testing.assert_allclose(lr, l1, rtol=1e-5)
    for k in p1:
        np.testing.assert_allclose(pr[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # LoRA (with dropout) on int8 frozen weights: the factors train the same sharded (FSDP
    # shards the stacked factors too), and the int8 values and per-channel scales shard.
    # (bf16 frozen weights shard in the attention-only runs above.)
    l8, p8, n8 = run(jax.devices(), strategy, "lora", frozen_int8=True)
    l1, p1, _ = run(jax.devices()[:1], strategy, "lora", frozen_int8=True)
    assert quant.is_quantized(p1[quant.EMBEDDING]) and n8 > 10, n8
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert l1[2] < l1[0], l1  # the factors learn
    for k in p1:
        if not quant.is_quantized(p1[k]):
            np.testing.assert_allclose(p8[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    print("SHARDED_OK", l8, n8)


if __name__ == "__main__":
    main()
