"""Faults evaluation can hit: questions the reader must skip, an unwritable output directory,
an extremely long question."""

import json

import numpy as np
from PIL import Image

from pg_jax import evaluate


def _argv(workdir, ckpt, data, split, *extra):
    return ["--workdir", str(workdir), "--ckpt", ckpt, "--data", data, "--split", split,
            "--batch_size", "2", "--max_decode_len", "3", "--text_len", "24", *extra]


def test_skipped_questions_are_counted_named_and_score_zero(ckpt, tiny_json, tmp_path, capsys):
    """The fixture's train split: questions 10 and 11 are fine, 12's page is corrupt, 13 has no
    answers, 14 an empty question."""
    assert evaluate.main(_argv(tmp_path, ckpt, tiny_json, "train")) == 0
    out = capsys.readouterr().out
    assert ("WARNING docvqa/train: skipped 3 question(s): empty_question 1 (questionId 14); "
            "no_answers 1 (questionId 13); undecodable_image 1 (questionId 12).") in out
    m = json.loads((tmp_path / "docvqa_train_metrics.json").read_text())
    p = "docvqa/train/"
    assert m[p + "num"] == 2 and m[p + "num_skipped"] == 3
    assert m[p + "num_skipped/undecodable_image"] == 1 and m[p + "num_skipped/empty_question"] == 1
    # Over all questions with ground truth (12 and 14 score 0; 13 has none), and over the scored.
    np.testing.assert_allclose(m[p + "anls"], m[p + "anls_scored"] * 2 / 4)
    records = {r["questionId"]: r for r in json.loads((tmp_path / "docvqa_train.json").read_text())}
    assert sorted(records) == [10, 11, 12, 13, 14]
    assert records[12]["skipped"] == "undecodable_image" and records[12]["answer"] == ""
    assert records[12]["anls"] == 0.0 and "anls" not in records[13]
    assert "(skipped: undecodable_image)" in (tmp_path / "docvqa_train.html").read_text()


def test_test_split_submission_holds_every_question_id(ckpt, tiny_json, tmp_path, capsys):
    """The server needs an answer for every questionId: skipped ones get "" and a warning."""
    assert evaluate.main(_argv(tmp_path, ckpt, tiny_json, "test", "--no_report")) == 0
    out = capsys.readouterr().out
    assert "WARNING docvqa/test: skipped 3 question(s)" in out
    submission = json.loads((tmp_path / "docvqa_test.json").read_text())
    assert sorted(r["questionId"] for r in submission) == [10, 11, 12, 13, 14]
    assert all(set(r) == {"questionId", "answer"} for r in submission)
    assert {r["questionId"]: r["answer"] for r in submission}[13] == ""  # its page is missing


def test_unwritable_workdir_is_refused_before_decoding(ckpt, tiny_json, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv = _argv(blocker / "out", ckpt, tiny_json, "train")
    assert evaluate.main(argv) == 2
    captured = capsys.readouterr()
    assert f"error: cannot write the outputs to --workdir {blocker / 'out'}" in captured.err
    assert "loading" not in captured.out  # nothing was loaded or decoded


def test_an_extremely_long_question_is_truncated_and_counted(ckpt, tmp_path):
    root = tmp_path / "docvqa"
    docs = root / "val" / "documents"
    docs.mkdir(parents=True)
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(docs / "p.png")
    recs = [{"questionId": 1, "question": "What is " + "very " * 1000 + "long?",
             "image": "documents/p.png", "docId": 1, "answers": ["7"]},
            {"questionId": 2, "question": "Short?", "image": "documents/p.png", "docId": 1,
             "answers": ["8"]}]
    (root / "val" / "val_v1.0.json").write_text(json.dumps({"data": recs}))
    work = tmp_path / "out"
    assert evaluate.main(_argv(work, ckpt, str(root), "val", "--no_report")) == 0
    m = json.loads((work / "docvqa_val_metrics.json").read_text())
    assert m["docvqa/val/num"] == 2 and m["docvqa/val/num_truncated"] == 1
    assert m["docvqa/val/num_skipped"] == 0
