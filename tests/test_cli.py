"""pg_jax.evaluate and pg_jax.predict command lines on a tiny random checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pg_jax import evaluate, predict
from pg_jax.models import exporter
from tests import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "page.png"
    Image.fromarray(np.full((60, 40, 3), 200, np.uint8)).save(path)
    return str(path)


def test_evaluate_flags_only(ckpt, synth, tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--ckpt", ckpt, "--data", synth, "--limit", "5",
            "--batch_size", "4", "--max_decode_len", "4", "--text_len", "24"]  # fmt: skip
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    assert "docvqa/val" in out and "anls " in out
    metrics = json.loads((tmp_path / "docvqa_val_metrics.json").read_text())
    assert metrics["docvqa/val/num"] == 5 and 0 <= metrics["docvqa/val/anls"] <= 1
    records = json.loads((tmp_path / "docvqa_val.json").read_text())
    assert len(records) == 5 and all("anls" in r for r in records)
    assert "<table>" in (tmp_path / "docvqa_val.html").read_text()


def test_evaluate_on_four_devices_matches_one(ckpt, synth, tmp_path):
    """Each of 4 (fake CPU) devices decodes its share of every batch; answers are unchanged."""
    def argv(workdir):
        return ["--workdir", str(workdir), "--ckpt", ckpt, "--data", synth, "--limit", "8",
                "--batch_size", "4", "--max_decode_len", "4", "--text_len", "24",
                "--no_report"]  # fmt: skip

    assert evaluate.main(argv(tmp_path / "one")) == 0
    code = f"import sys\nfrom pg_jax import evaluate\nsys.exit(evaluate.main({argv(tmp_path / 'four')!r}))"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "onto 4 device(s)" in out.stdout
    one = json.loads((tmp_path / "one" / "docvqa_val.json").read_text())
    four = json.loads((tmp_path / "four" / "docvqa_val.json").read_text())
    assert len(one) == 8
    assert [(r["questionId"], r["answer"]) for r in four] == [
        (r["questionId"], r["answer"]) for r in one
    ]


def test_evaluate_without_checkpoint_says_so(tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "params.npz does not exist" in err and "--ckpt" in err


def test_evaluate_help_lists_flags(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--ckpt", "--split", "--data", "--limit", "--tokenizer"):
        assert flag in out


def test_predict_one_and_many(ckpt, page, tmp_path, capsys):
    assert predict.main(["--ckpt", ckpt, "--image", page, "--question", "What is the total?",
                         "--max_decode_len", "4"]) == 0  # fmt: skip
    single = capsys.readouterr().out.rstrip("\n")
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"image": page, "question": q})
            for q in ["What is the total?", "What is the date?", "Which room?"]
        )
    )
    out = tmp_path / "a.jsonl"
    argv = ["--ckpt", ckpt, "--input", str(jsonl), "--output", str(out), "--batch_size", "2",
            "--max_decode_len", "4"]  # fmt: skip
    assert predict.main(argv) == 0
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["question"] for a in answers] == ["What is the total?", "What is the date?",
                                                "Which room?"]  # fmt: skip
    assert answers[0]["answer"] == single  # batched (padded) == alone
    # CSV input, image path relative to the file.
    csv = tmp_path / "q.csv"
    os.symlink(page, tmp_path / "p.png")
    csv.write_text("image,question\np.png,What is the total?\n")
    assert predict.main(["--ckpt", ckpt, "--input", str(csv), "--max_decode_len", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == single


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "image not found: {missing}"),
        ("corrupt", "cannot read image {corrupt}"),
        ("empty_question", "empty question for image {page}"),
        ("empty_in_file", "q.jsonl:2 (image {page}): empty question"),
    ],
)
def test_predict_input_errors(case, message, ckpt, page, tmp_path, capsys):
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"\x89PNG not really")
    names = {"missing": str(tmp_path / "nope.png"), "corrupt": str(corrupt), "page": page}
    q = "What is the total?"
    if case == "missing":
        argv = ["--image", names["missing"], "--question", q]
    elif case == "corrupt":
        argv = ["--image", names["corrupt"], "--question", q]
    elif case == "empty_question":
        argv = ["--image", page, "--question", "   "]
    else:
        f = tmp_path / "q.jsonl"
        f.write_text(json.dumps({"image": page, "question": q}) + "\n"
                     + json.dumps({"image": page, "question": ""}) + "\n")  # fmt: skip
        argv = ["--input", str(f)]
        message = message.replace("q.jsonl", str(f))
    assert predict.main(["--ckpt", ckpt, *argv]) == 2
    err = capsys.readouterr().err
    expected = message.format(**names)
    if case == "empty_in_file":
        expected = f"empty question for {f}:2 (image {page})"
    assert expected in err, err


def test_predict_refuses_a_tokenizer_that_does_not_fit(tmp_path, page, capsys):
    _, params = tiny_model.make("tiny_pg1", res=28, vocab_size=300)
    path = str(tmp_path / "small_vocab.npz")
    exporter.save_npz(params, path)
    argv = ["--ckpt", path, "--image", page, "--question", "What?"]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    assert "2413 pieces" in err and f"checkpoint {path} has a vocabulary of 300" in err


def test_evaluate_prompt_flags_become_config_arguments():
    """--text_len, --prompt and --tokenizer reach the config's pp strings as its arguments."""
    from pg_jax import config_cli, evaluate

    def spec(*argv):
        return evaluate.config_spec(evaluate._parser().parse_args(["--workdir", "w", *argv]), None)

    assert spec("--config", "configs/docvqa.py:data=/d/docvqa", "--text_len", "24") == (
        "configs/docvqa.py:data=/d/docvqa,text_len=24")
    assert spec("--config", "configs/docvqa.py", "--prompt", "answer en {question}") == (
        "configs/docvqa.py:prompt=answer en {question}")
    config = config_cli.load_config(
        spec("--config", "configs/docvqa.py:res=28", "--text_len", "12"))
    assert "fit(12, suffix=None" in config.evals["docvqa/val"]["pp_fn"]
