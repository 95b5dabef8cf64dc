"""pg_jax.kaggle: finding a Kaggle notebook's attached inputs and preparing the subsets."""

import json
import os
import shutil

import pytest

from configs import docvqa
from pg_jax import kaggle
from pg_jax.data import core as data_core
from pg_jax.pp.tokenizer import get_default_tokenizer_path


@pytest.fixture
def kaggle_input(tmp_path, ckpt, synth):
    """Kaggle's layout: a model (checkpoint + tokenizer), a tokenizer elsewhere, DocumentVQA."""
    root = tmp_path / "input"
    model = root / "paligemma" / "jax" / "paligemma-tiny-28" / "1"
    model.mkdir(parents=True)
    shutil.copy(ckpt, model / "paligemma-tiny-28.f16.npz")
    shutil.copy(get_default_tokenizer_path(), model / kaggle.TOKENIZER_NAME)
    (root / "tokenizers").mkdir()
    shutil.copy(get_default_tokenizer_path(), root / "tokenizers" / kaggle.TOKENIZER_NAME)
    shutil.copytree(os.path.join(synth, "hf"), root / "documentvqa")
    return root


def test_finds_the_attached_checkpoint_tokenizer_and_shards(kaggle_input):
    inputs = kaggle.find_inputs(str(kaggle_input))
    model = kaggle_input / "paligemma" / "jax" / "paligemma-tiny-28" / "1"
    assert inputs.ckpt == str(model / "paligemma-tiny-28.f16.npz")
    assert inputs.tokenizer == str(model / kaggle.TOKENIZER_NAME)  # the one next to it
    assert inputs.data == str(kaggle_input / "documentvqa" / "data")
    assert inputs.res == 28  # read off the checkpoint's shapes
    assert not inputs.embedded and not inputs.notes


def test_nothing_attached_is_the_embedded_default(tmp_path):
    inputs = kaggle.find_inputs(str(tmp_path / "no_such_dir"))
    assert inputs.embedded and (inputs.ckpt, inputs.tokenizer, inputs.data) == ("", "", "")
    assert "embedded default" in inputs.describe()


def test_data_without_a_checkpoint_is_ignored_with_a_note(kaggle_input):
    shutil.rmtree(kaggle_input / "paligemma")
    inputs = kaggle.find_inputs(str(kaggle_input))
    assert inputs.embedded and inputs.data == ""
    assert "ignoring" in inputs.notes[0] and "documentvqa" in inputs.notes[0]


def test_several_checkpoints_ask_for_ckpt(kaggle_input, ckpt):
    other = kaggle_input / "paligemma2" / "paligemma2-tiny-28.b16.npz"
    other.parent.mkdir()
    shutil.copy(ckpt, other)
    with pytest.raises(ValueError, match="2 PaliGemma checkpoints .* set CKPT"):
        kaggle.find_inputs(str(kaggle_input))
    inputs = kaggle.find_inputs(str(kaggle_input), ckpt=str(other))
    assert inputs.ckpt == str(other)
    assert inputs.tokenizer == str(kaggle_input / "tokenizers" / kaggle.TOKENIZER_NAME)


def test_a_docvqa_named_directory_wins_over_other_parquet(kaggle_input, synth):
    shutil.copytree(os.path.join(synth, "hf"), kaggle_input / "other-dataset")
    assert kaggle.find_inputs(str(kaggle_input)).data.endswith(os.path.join("documentvqa", "data"))
    shutil.move(kaggle_input / "documentvqa", kaggle_input / "second")
    with pytest.raises(ValueError, match="set DATA"):
        kaggle.find_inputs(str(kaggle_input))


def test_a_checkpoint_needs_its_tokenizer(kaggle_input):
    for tok in kaggle_input.rglob(kaggle.TOKENIZER_NAME):
        tok.unlink()
    with pytest.raises(ValueError, match="no paligemma_tokenizer.model .* set TOKENIZER"):
        kaggle.find_inputs(str(kaggle_input))


def test_a_given_path_must_exist(kaggle_input):
    with pytest.raises(FileNotFoundError, match="data directory /no/such/dir does not exist"):
        kaggle.find_inputs(str(kaggle_input), data="/no/such/dir")


def test_prepare_subsets_of_the_attached_shards(kaggle_input, tmp_path):
    inputs = kaggle.find_inputs(str(kaggle_input))
    arg = kaggle.prepare_subsets(inputs, str(tmp_path / "data"), train_questions=6,
                                 eval_questions=4, sharding="fsdp")
    assert kaggle.prepare_subsets(inputs, str(tmp_path / "data"), train_questions=6,
                                  eval_questions=4, sharding="fsdp") == arg  # reused
    cfg = docvqa.get_config(arg)
    assert cfg.model_init == inputs.ckpt and cfg.tokenizer == inputs.tokenizer
    assert cfg.input.res == 28 and cfg.sharding_strategy == [(".*", 'fsdp(axis="data")')]
    assert data_core.resolve(cfg.input.data)["name"] == "docvqa_prepared"
    for path, split, count in ((cfg.input.data["path"], "train", 6),
                               (cfg.evals["docvqa/val"]["data"]["path"], "validation", 4)):
        with open(os.path.join(path, "manifest.json")) as f:
            manifest = json.load(f)
        options = manifest["options"]
        assert (options["split"], manifest["counts"]["kept"], options["res"]) == (split, count, 28)


def test_prepare_subsets_of_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.setenv("PG_JAX_CACHE", str(tmp_path / "cache"))
    arg = kaggle.prepare_subsets(kaggle.Inputs(), str(tmp_path / "data"), train_questions=6,
                                 eval_questions=4, synthetic_pages=20)
    cfg = docvqa.get_config(arg)
    assert cfg.demo and cfg.model_init == docvqa.DEMO_CHECKPOINT
    assert cfg.input.cache_dir.startswith(str(tmp_path / "data"))
    # The set the trainer will read (the config's placeholder) is the one generated now.
    assert os.path.isdir(tmp_path / "cache" / "synthetic_docvqa" / "demo-seed0-pages20")
