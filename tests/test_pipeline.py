"""Input pipeline: determinism, host sharding, iterator save/restore, eval padding."""

import numpy as np
import pytest

from configs import docvqa
from pg_jax import prepare_data
from pg_jax.data import core
from pg_jax.data import input_pipeline as ip

# The config's pp strings for training and for the vqa eval, at 28 px and 16 tokens.
_CONFIG = docvqa.get_config("res=28,text_len=16")
PP_TRAIN, PP_EVAL = _CONFIG.input.pp, _CONFIG.evals["docvqa/val"]["pp_fn"]


@pytest.fixture(scope="module")
def cache(synth, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("cache") / "c")
    prepare_data.prepare(
        "hf-parquet", f"{synth}/hf", "train", out, res=28, examples_per_shard=40, verbose=False
    )
    return out


def batches(source, n, **kw):
    it = ip.make_iterator(
        source,
        PP_TRAIN,
        batch_size=4,
        process_index=0,
        process_count=1,
        shuffle_buffer=16,
        **kw,
    )
    return it, [next(it) for _ in range(n)]


def equal(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_and_determinism(cache):
    src = core.get("docvqa_prepared", path=cache)
    _, a = batches(src, 3, seed=1)
    _, b = batches(src, 3, seed=1)
    _, c = batches(src, 3, seed=2)
    assert all(equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(equal(x, y) for x, y in zip(a, c, strict=True))
    assert a[0]["image"].shape == (4, 28, 28, 3) and a[0]["text"].shape == (4, 17)
    assert a[0]["image"].min() >= -1 and a[0]["image"].max() <= 1


def test_save_restore_same_next_batch(cache):
    src = core.get("docvqa_prepared", path=cache)
    n = src.num_examples  # Restore across an epoch boundary too.
    for steps in (3, n // 4 + 2):
        it, _ = batches(src, steps, seed=5)
        state = it.state()
        want = [next(it) for _ in range(2)]
        it2 = ip.make_iterator(
            src,
            PP_TRAIN,
            batch_size=4,
            seed=5,
            state=state,
            process_index=0,
            process_count=1,
            shuffle_buffer=16,
        )
        assert all(equal(w, next(it2)) for w in want)
    with pytest.raises(ValueError, match="another seed"):
        ip.make_iterator(
            src,
            "keep('image')",
            batch_size=4,
            seed=6,
            state=state,
            process_index=0,
            process_count=1,
        )


def test_hosts_read_disjoint_shards(cache):
    src = core.get("docvqa_prepared", path=cache)
    seen = []
    for host in range(2):
        ids = [
            r["question_id"]
            for r in src.get_tfdata(shard_index=host, shard_count=2).as_numpy_iterator()
        ]
        assert len(ids) == src.num_examples_for(host, 2)
        seen.append(set(ids))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == src.num_examples


def test_eval_batches_cover_everything_once(cache):
    src = core.get("docvqa_prepared", path=cache)
    ids, n_batches = [], 0
    for b in ip.eval_batches(
        src, PP_EVAL, batch_size=8, process_index=0, process_count=1
    ):
        assert b["text"].shape == (8, 16) and b["answers"].shape == (8, 16)
        ids += list(b["question_id"][b["_mask"]])
        n_batches += 1
    assert sorted(ids) == sorted(set(ids)) and len(ids) == src.num_examples
    assert n_batches == -(-src.num_examples // 8)


def test_raw_png_source_pipeline(synth):
    src = core.get("docvqa_json", path=f"{synth}/docvqa", split="val", limit=8)
    it = ip.make_iterator(
        src, PP_TRAIN, batch_size=4, process_index=0, process_count=1
    )
    assert next(it)["image"].shape == (4, 28, 28, 3)


def test_eval_batches_give_every_process_the_same_number_of_batches(synth):
    """A model call on params spanning processes is a collective: no host may stop early."""
    src = core.get("docvqa_json", path=f"{synth}/docvqa", split="val", limit=9)
    counts = [src.num_examples_for(i, 2) for i in range(2)]
    assert sorted(counts) == [4, 5]  # 4 rows fit one batch of 4, 5 rows need two
    for host in range(2):
        got = list(ip.eval_batches(src, PP_EVAL, batch_size=4,
                                   process_index=host, process_count=2))
        assert len(got) == 2
        assert sum(int(b["_mask"].sum()) for b in got) == counts[host]
        if counts[host] == 4:
            assert not got[-1]["_mask"].any()  # the extra batch is all padding
