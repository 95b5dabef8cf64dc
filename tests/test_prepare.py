"""prepare_data: cache contents, skip reasons, reuse, refusal, overwrite, CLI.

Resolutions are small multiples of the patch size 14, the only ones prepare_data accepts."""

import json

import numpy as np
import pytest

from pg_jax import prepare_data
from pg_jax.data import core


def test_prepare_hf_and_reuse(tiny_hf, tmp_path, capsys):
    out = str(tmp_path / "c")
    m = prepare_data.prepare("hf-parquet", tiny_hf, "train", out, res=28)
    assert m["counts"] == {"read": 5, "selected": 3, "kept": 2, "skipped": 3, "pages_decoded": 1}
    assert set(m["skipped"]) == {"no_answers", "empty_question", "undecodable_image"}
    src = core.get("docvqa_prepared", path=out)
    rows = list(src.get_tfdata().as_numpy_iterator())
    assert [r["question_id"] for r in rows] == [10, 11]
    assert rows[0]["question"] == b"What is the total?"
    assert list(rows[0]["answers"]) == [b"$12", b"12"] and list(rows[0]["question_types"]) == [
        b"form"
    ]
    # Same options: reused (said so, nothing rewritten).
    again = prepare_data.prepare("hf-parquet", tiny_hf, "train", out, res=28)
    assert again["created"] == m["created"] and "Reusing cache" in capsys.readouterr().out
    # Other options: refused, naming the difference; with overwrite: rebuilt.
    with pytest.raises(prepare_data.CacheMismatchError, match=r"res: 28 -> 14.*--overwrite"):
        prepare_data.prepare("hf-parquet", tiny_hf, "train", out, res=14)
    m8 = prepare_data.prepare(
        "hf-parquet", tiny_hf, "train", out, res=14, image_format="raw", overwrite=True
    )
    assert m8["options"]["res"] == 14
    img = next(core.get("docvqa_prepared", path=out).get_tfdata().as_numpy_iterator())["image"]
    assert img.shape == (14, 14, 3) and img.dtype == np.uint8 and (img == 10).all()


def test_prepare_json_and_cli(tiny_json, tmp_path):
    out = str(tmp_path / "j")
    rc = prepare_data.main(
        [
            "--source",
            "docvqa-json",
            "--input",
            tiny_json,
            "--split",
            "test",
            "--res",
            "28",
            "--out",
            out,
        ]
    )
    assert rc == 0
    m = json.load(open(f"{out}/manifest.json"))
    assert m["counts"]["kept"] == 2 and m["skipped"]["missing_image"]["count"] == 1
    assert m["skipped"]["undecodable_image"]["first"] == ["questionId=12"]
    assert (
        prepare_data.main(
            [
                "--source",
                "docvqa-json",
                "--input",
                tiny_json,
                "--split",
                "test",
                "--res",
                "42",
                "--out",
                out,
            ]
        )
        == 2
    )  # Refused.
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(prepare_data.CacheMismatchError, match="no manifest.json"):
        prepare_data.prepare("docvqa-json", tiny_json, "test", str(tmp_path / "junk"), res=28)
