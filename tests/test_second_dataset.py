"""A second VQA data set, added through the config only: a registry entry and config keys.

The set is in the HF parquet layout but names its columns otherwise (``qid``, ``query``,
``page``, one ``answer`` string instead of a list) and has no question types or document ids.
Registering it is the one line `docvqa.register_parquet_vqa(...)`; the config names it in
``input.data`` and in its evals. The tiny run trains on it and evaluates it.
"""

import glob
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pg_jax.data import docvqa as docvqa_data
from pg_jax.pp.registry import Registry

NAME = "pagevqa_test"
COLUMNS = {"questionId": "qid", "question": "query", "image": "page", "answers": "answer"}


@pytest.fixture(scope="module")
def other_parquet(synth, tmp_path_factory) -> str:
    """The synthetic set's HF shards rewritten with other column names, one answer each."""
    out = tmp_path_factory.mktemp("pagevqa") / "data"
    out.mkdir()
    for split, n in (("train", 24), ("validation", 6)):
        (src,) = glob.glob(f"{synth}/hf/**/{split}-*.parquet", recursive=True)
        t = pq.read_table(src).slice(0, n)
        pq.write_table(pa.table({
            "qid": t.column("questionId"),
            "query": t.column("question"),
            "page": t.column("image"),
            "answer": [a[0] for a in t.column("answers").to_pylist()],
        }), out / f"{split}-00000-of-00001.parquet")
    return str(out.parent)


def test_a_parquet_vqa_set_with_other_column_names_trains_and_evaluates(other_parquet, tmp_path):
    from configs import docvqa
    from pg_jax import train

    if not Registry.knows(f"datasets.{NAME}"):
        docvqa_data.register_parquet_vqa(NAME, COLUMNS)  # the registry entry
    # The config: the docvqa recipe with the data set named instead of DocVQA's.
    cfg = docvqa.get_config("mode=runlocal,res=28,text_len=16,data=/unused")
    cfg.input.data = {"name": NAME, "path": other_parquet, "split": "train"}
    val = {"name": NAME, "path": other_parquet, "split": "val", "limit": 4}
    cfg.evals = {
        "pagevqa/val": {**cfg.evals["docvqa/val"], "data": val, "batch_size": 2,
                        "baseline_data": dict(cfg.input.data)},
        "pagevqa/val/pplx": {**cfg.evals["docvqa/val/pplx"], "data": val, "batch_size": 2},
    }
    cfg.export_hf = cfg.export_npz = False
    cfg.progress_bar = False
    summary = train.train(cfg, str(tmp_path))

    assert summary["steps"] == 2 and summary["pagevqa/val/num"] == 4
    assert 0.0 <= summary["pagevqa/val/anls"] <= 1.0 and summary["pagevqa/val/pplx/loss"] > 0
    assert not any("/anls/" in k for k in summary)  # no question types: no per-type breakdown
    # The predictions name the file's questions and answers, read through the other columns.
    file_val = pq.read_table(glob.glob(f"{other_parquet}/**/validation-*.parquet",
                                       recursive=True)[0]).to_pylist()[:4]
    with open(os.path.join(tmp_path, "pagevqa_val.json")) as f:
        records = json.load(f)
    assert sorted((r["questionId"], r["question"], r["answers"]) for r in records) == sorted(
        (r["qid"], r["query"], [r["answer"]]) for r in file_val)


def test_a_missing_renamed_column_is_named(other_parquet):
    from pg_jax.data import core

    if not Registry.knows(f"datasets.{NAME}_bad"):
        docvqa_data.register_parquet_vqa(f"{NAME}_bad", {**COLUMNS, "question": "prompt"})
    with pytest.raises(ValueError, match=r"not pagevqa_test_bad parquet: missing columns "
                       r"\['prompt'\]"):
        core.get(f"{NAME}_bad", path=other_parquet, split="train")
