"""Preprocessed arrays: the real pipeline's examples, read back and trained on without TF."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

import pg_jax
from pg_jax.data import core, preprocessed_arrays, synthetic
from pg_jax.data import input_pipeline as ip
from tests import test_no_tensorflow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES, SEED = 4, 1  # two questions a page: 8 examples


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_demo_checkpoint", os.path.join(ROOT, "scripts", "make_demo_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> str:
    """The arrays file the lead's command writes, for a few pages."""
    path = str(tmp_path_factory.mktemp("arrays") / "demo.npz")
    _script().write_arrays(path, PAGES, SEED)
    return path


def _pipeline_examples(tmp_path) -> tuple[dict, str]:
    """The same pages, through the training pipeline of configs/demo_pretrain.py (one epoch,
    in order), and that pp."""
    synthetic.generate(str(tmp_path), seed=SEED, num_pages=PAGES, fmt="docvqa-json",
                       difficulty="demo_read", workers=1)
    source = core.get("docvqa_json", path=str(tmp_path / "docvqa"), split="train")
    pp = _script().pretrain_config(1).input.pp
    it = ip.make_iterator(source, pp, batch_size=source.num_examples, seed=0, shuffle_buffer=0,
                          process_index=0, process_count=1)
    return next(it), pp


def test_arrays_read_back_are_the_pipelines_examples(written, tmp_path):
    expected, pp = _pipeline_examples(tmp_path)
    n = len(expected["text"])
    assert n == 2 * PAGES
    source = preprocessed_arrays.ArraySource(written, res=112, text_len=24, pp=pp)
    assert source.num_examples == n
    assert source.images.shape == (PAGES, 112, 112, 1)  # one gray image per page
    got = next(source.make_iterator(batch_size=n, seed=0))
    assert set(got) == set(expected)
    # The iterator's order is shuffled: match each row to an unused pipeline row.
    unused = list(range(n))
    for r in range(n):
        match = [j for j in unused
                 if all(np.array_equal(got[k][r], expected[k][j])
                        for k in preprocessed_arrays.TEXT_KEYS)
                 and np.abs(got["image"][r] - expected["image"][j]).max() <= 1 / 255 + 1e-6]
        assert match, f"row {r} of the arrays is none of the pipeline's examples"
        unused.remove(match[0])
    for k in expected:
        assert got[k].dtype == expected[k].dtype and got[k].shape == expected[k].shape, k
    # Pages differ (the values are drawn per page), so matching images is not vacuous.
    assert len({expected["image"][j].tobytes() for j in range(n)}) == PAGES


def _toy_file(path, n=10, res=4) -> None:
    """n examples whose first token is their id and whose gray image is filled with it."""
    text = np.zeros((n, 6), np.int32)
    text[:, 0] = np.arange(n)
    image = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 20, res * res, 1)
    np.savez_compressed(path, image=image.reshape(n, res, res, 1),
                        image_index=np.arange(n, dtype=np.int32)[::-1].copy(), text=text,
                        mask_ar=text, mask_loss=text, mask_input=text,
                        truncated=np.zeros(n, np.int32), pp=np.asarray("toy"))


def test_each_epoch_is_a_permutation_and_a_resumed_iterator_continues(tmp_path):
    path = str(tmp_path / "toy.npz")
    _toy_file(path)
    source = preprocessed_arrays.ArraySource(path)
    it = source.make_iterator(batch_size=3, seed=5)
    batches = [next(it) for _ in range(7)]  # 21 examples: epochs 0, 1 and one of epoch 2
    ids = np.concatenate([b["text"][:, 0] for b in batches])
    assert sorted(ids[:10]) == list(range(10)) and sorted(ids[10:20]) == list(range(10))
    assert not np.array_equal(ids[:10], ids[10:20])  # reshuffled each epoch
    assert not np.array_equal(ids[:10], np.arange(10))
    # Images follow image_index (reversed here) and come back as RGB in [-1, 1].
    b = batches[0]
    assert b["image"].shape == (3, 4, 4, 3) and b["image"].dtype == np.float32
    np.testing.assert_allclose(b["image"][:, 0, 0, 0], (9 - b["text"][:, 0]) * 20 / 127.5 - 1,
                               atol=1e-6)
    # Resume after 4 batches: the same next batches as the uninterrupted iterator.
    resumed_at = source.make_iterator(batch_size=3, seed=5)
    for _ in range(4):
        next(resumed_at)
    resumed = source.make_iterator(batch_size=3, seed=5, state=resumed_at.state())
    for expected in batches[4:]:
        got = next(resumed)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
    other_seed = np.concatenate(
        [next(source.make_iterator(batch_size=10, seed=6))["text"][:, 0]])
    assert not np.array_equal(other_seed, ids[:10])
    with pytest.raises(ValueError, match="another seed or batch size"):
        source.make_iterator(batch_size=4, seed=5, state=resumed_at.state())


def test_processes_train_on_disjoint_shares(tmp_path):
    path = str(tmp_path / "toy.npz")
    _toy_file(path)
    shares = [preprocessed_arrays.ArraySource(path, process_index=i, process_count=2)
              for i in range(2)]
    ids = [set(next(s.make_iterator(batch_size=5))["text"][:, 0]) for s in shares]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(range(10))
    assert shares[0].num_examples == 10  # the whole file's, as other sources count


def test_a_file_made_for_another_config_is_refused(written, tmp_path):
    with pytest.raises(ValueError, match="holds 112 px images; the config's input.res is 56"):
        preprocessed_arrays.ArraySource(written, res=56)
    with pytest.raises(ValueError, match="holds text_len 24"):
        preprocessed_arrays.ArraySource(written, text_len=16)
    with pytest.raises(ValueError, match="another input.pp"):
        preprocessed_arrays.ArraySource(written, pp="decode|resize(112)")
    with pytest.raises(FileNotFoundError, match="--write_arrays"):
        preprocessed_arrays.ArraySource(str(tmp_path / "missing.npz"))


def test_pretraining_from_arrays_runs_without_tensorflow(written, tmp_path):
    """The lead's GPU command (scripts/make_demo_checkpoint.py --arrays), 2 steps, with
    TensorFlow blocked: it trains, the loss is finite, and the bf16 checkpoint is written."""
    workdir, out = tmp_path / "run", tmp_path / "demo.npz"
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('m', 'scripts/make_demo_checkpoint.py')\n"
        "m = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(m)\n"
        f"m.main(['--arrays', {written!r}, '--workdir', {str(workdir)!r}, '--steps', '2',\n"
        f"        '--batch_size', '2', '--lr', '1e-3', '--out', {str(out)!r}])\n"
        "assert sys.modules['tensorflow'] is None, 'tensorflow was imported'\n"
        "print('trained without tensorflow')\n"
    )
    proc = test_no_tensorflow._run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("trained without tensorflow")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["training_loss"] for r in rows if "training_loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert f"{2 * PAGES} training examples; 2 steps of 2" in (workdir / "train.log").read_text()
    model, params = pg_jax.load(str(out))
    assert model.img["image_size"] == 112
    assert str(params["llm"]["embedder"]["input_embedding"].dtype) == "bfloat16"
