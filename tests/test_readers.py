"""Both DocVQA readers on tiny files in the exact formats; skips; refusal of non-DocVQA input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pg_jax.data import core


def ids(source):
    return [e.question_id for e in source.iter_examples()]


def test_hf_reader_skips_and_counts(tiny_hf):
    src = core.get("docvqa_hf", path=tiny_hf, split="train")
    assert src.num_read == 5
    assert src.skips.counts == {"no_answers": 1, "empty_question": 1}
    assert src.skips.first["no_answers"] == ["questionId=13"]
    assert ids(src) == [10, 11, 12]  # The corrupt page is caught when decoding (below).
    rows = list(src.get_tfdata().as_numpy_iterator())
    assert [r["question_id"] for r in rows] == [10, 11]
    assert src.skips.counts["undecodable_image"] == 1
    assert list(rows[0]["answers"]) == [b"$12", b"12"]


def test_hf_test_split_keeps_unanswered(tiny_hf):
    src = core.get("docvqa_hf", path=tiny_hf, split="test")
    assert src.num_examples == 2 and src.skips.total == 0


def test_json_reader(tiny_json):
    src = core.get("docvqa_json", path=tiny_json, split="train")
    assert src.skips.counts == {"no_answers": 1, "empty_question": 1}
    assert ids(src) == [10, 11, 12]
    test = core.get("docvqa_json", path=tiny_json, split="test")  # No answers in the test JSON.
    assert test.num_examples == 4 and ids(test) == [10, 11, 12]
    assert test.skips.counts == {"empty_question": 1, "missing_image": 1}
    assert test.skips.first["missing_image"] == ["questionId=13 (documents/c_1.png)"]


def test_selection_and_filter(tiny_hf, tiny_json):
    for name, path in (("docvqa_hf", tiny_hf), ("docvqa_json", tiny_json)):
        assert core.get(name, path=path, split="train", limit=2).num_examples == 2
        assert core.get(name, path=path, split="train", fraction=0.34).num_examples == 1
        only = core.get(name, path=path, split="train", question_types=["layout"])
        assert ids(only) == [11]
        a = core.get(name, path=path, split="train", limit=2, sample_seed=1)
        b = core.get(name, path=path, split="train", limit=2, sample_seed=1)
        assert ids(a) == ids(b)


def test_refuses_non_docvqa(tmp_path):
    pq.write_table(pa.table({"text": ["x"], "label": [1]}), tmp_path / "train-0.parquet")
    with pytest.raises(ValueError, match=r"train-0.parquet is not .*missing columns.*questionId"):
        core.get("docvqa_hf", path=str(tmp_path), split="train")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train_v1.0.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match=r"train_v1.0.json is not DocVQA JSON.*'data'"):
        core.get("docvqa_json", path=str(tmp_path), split="train")
    (tmp_path / "train" / "train_v1.0.json").write_text(json.dumps({"data": [{"question": "q"}]}))
    with pytest.raises(ValueError, match=r"lacks keys \['questionId', 'image', 'docId'\]"):
        core.get("docvqa_json", path=str(tmp_path), split="train")
    with pytest.raises(FileNotFoundError):
        core.get("docvqa_hf", path=str(tmp_path / "nowhere"), split="train")
