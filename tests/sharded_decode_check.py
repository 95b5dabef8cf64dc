"""Run in a subprocess with 4 fake CPU devices: decoding (and the teacher-forced logits) with the
params on a mesh (replicated or FSDP-sharded) and the batch's rows split over the devices give
the single-device results."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from pg_jax import predict_fns, sharding
from tests import tiny_model

VOCAB, RES = 97, 28


def main():
    assert jax.device_count() == 4, jax.devices()
    model, params = tiny_model.make("tiny_pg1", res=RES, vocab_size=VOCAB)
    decode = predict_fns.get_all(model)["decode"]
    rng = np.random.default_rng(0)
    b, n = 8, 6
    lengths = rng.integers(2, n + 1, b)
    text = rng.integers(3, VOCAB, (b, n)).astype(np.int32)
    text[:, 0] = 2
    mask = np.arange(n)[None] < lengths[:, None]
    batch = {
        "image": rng.uniform(-1, 1, (b, RES, RES, 3)).astype(np.float32),
        "text": np.where(mask, text, 0),
        "mask_input": mask,
        "mask_ar": np.zeros_like(text),
    }
    kw = {"max_decode_len": 5, "eos_id": -1}
    one_device = jax.device_put(params, jax.devices()[0])
    expected = np.asarray(decode(one_device, batch, **kw))
    logits_fn = predict_fns.get_all(model)["logits"]  # what the perplexity evaluator runs
    expected_logits = np.asarray(logits_fn(one_device, batch)[0])

    mesh = sharding.make_mesh([("data", -1)])
    for rule in ("replicate()", 'fsdp(axis="data", min_size_mb=0)'):
        placed = jax.device_put(params, sharding.infer_sharding(params, [(".*", rule)], mesh))
        # The rows really are split: each device holds a quarter of them.
        on_mesh, _ = predict_fns.place_batch(placed, batch)
        shard_rows = {s.data.shape[0] for s in on_mesh["image"].addressable_shards}
        assert shard_rows == {b // 4}, (rule, shard_rows)
        got = np.asarray(decode(placed, batch, **kw))
        np.testing.assert_array_equal(got, expected, err_msg=rule)
        # FSDP splits contractions over devices: float sums reassociate (seen: 1.4e-5).
        np.testing.assert_allclose(np.asarray(logits_fn(placed, batch)[0]), expected_logits,
                                   rtol=1e-4, atol=1e-4, err_msg=rule)
        # 3 rows do not split over 4 devices: decoded unsplit on one host, same tokens.
        three = {k: v[:3] for k, v in batch.items()}
        np.testing.assert_array_equal(np.asarray(decode(placed, three, **kw)), expected[:3])
    print("SHARDED_DECODE_OK", expected[:2].tolist())


if __name__ == "__main__":
    main()
