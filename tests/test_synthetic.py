"""Synthetic DocVQA: determinism, answers read off the page, both formats agree."""

import collections
import json

from pg_jax.data import core, synthetic


def test_deterministic_pages():
    for difficulty in ("easy", "hard"):
        a = synthetic.make_page(3, "train", 7, difficulty)
        b = synthetic.make_page(3, "train", 7, difficulty)
        assert a[0] == b[0] and a[1] == b[1]
        assert synthetic.make_page(4, "train", 7, difficulty)[0] != a[0]


def test_same_question_different_answers():
    answers = collections.defaultdict(set)
    for i in range(200):
        for qa in synthetic.make_page(0, "train", i)[1].qas:
            answers[qa.question].add(qa.answers[0])
    # Every frequent template has many distinct answers: the page must be read.
    frequent = {q: a for q, a in answers.items() if len(a) >= 5}
    assert len(frequent) >= 10
    assert all(len(a) >= 3 for q, a in answers.items() if "type of document" not in q)


def test_spellings_and_formats_agree(synth):
    summary = json.load(open(f"{synth}/DONE.json"))
    assert summary["splits"]["train"]["pages"] == 30
    hf = core.get("docvqa_hf", path=f"{synth}/hf", split="train")
    js = core.get("docvqa_json", path=f"{synth}/docvqa", split="train")
    assert hf.num_examples == js.num_examples == summary["splits"]["train"]["questions"]
    assert hf.skips.total == 0 and js.skips.total == 0
    test = core.get("docvqa_hf", path=f"{synth}/hf", split="test")
    assert test.num_examples > 0 and all(not e.answers for e in test._selected)
    hard = synthetic.make_page(0, "train", 1, "hard")[1]
    money = [
        qa
        for i in range(20)
        for qa in synthetic.make_page(0, "train", i, "hard")[1].qas
        if qa.answers[0].startswith("$")
    ]
    assert money and all(len(qa.answers) == 3 for qa in money) and hard.qas


def test_ensure_synthetic_caches(tmp_path):
    d = synthetic.ensure_synthetic(str(tmp_path), num_pages=20)
    assert d.endswith("easy-seed0-pages20")
    assert synthetic.ensure_synthetic(str(tmp_path), num_pages=20) == d


def test_demo_read_is_the_demo_pages_with_other_questions():
    """The demo checkpoint's pretraining task shows the demo's pages (drawn from another seed by
    default) but asks OCR-style and by position, never with a DocVQA question."""
    demo_questions, read_answers = set(), collections.defaultdict(set)
    for i in range(40):
        png, demo = synthetic.make_page(0, "train", i, "demo")
        png_read, read = synthetic.make_page(0, "train", i, "demo_read")
        assert png_read == png and read.lines == demo.lines
        values = [line.split(": ")[1] for line in demo.lines]
        ocr, positional = read.qas
        assert (ocr.question, ocr.answers) == ("ocr", [" ".join([demo.title, *values])])
        assert positional.answers[0] in [demo.title, *values]
        demo_questions |= {qa.question for qa in demo.qas}
        for qa in read.qas:
            read_answers[qa.question].add(qa.answers[0])
    assert not demo_questions & set(read_answers)
    assert set(read_answers) == {"ocr", "Title?", "Line 1?", "Line 2?", "Line 3?"}
    assert all(len(a) >= 4 for a in read_answers.values())  # read off the page
    assert synthetic.PLACEHOLDER_SEED["demo_read"] != synthetic.PLACEHOLDER_SEED.get("demo", 0)


def test_placeholder_num_pages_and_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PG_JAX_CACHE", str(tmp_path))
    spec = {"name": "docvqa_json", "path": "synthetic", "split": "train", "num_pages": 20}
    out = synthetic.resolve_placeholder(spec, "demo")
    assert out["path"].endswith("demo-seed0-pages20/docvqa") and "num_pages" not in out
    assert "Generating the synthetic DocVQA set (demo, 20 train pages)" in capsys.readouterr().out
    assert synthetic.resolve_placeholder(spec, "demo") == out
    assert "Generating" not in capsys.readouterr().out  # cached
