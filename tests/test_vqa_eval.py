"""The vqa evaluator, its predictions JSON and HTML report, on a tiny synthetic split."""

import base64
import html
import json
import os
import re

import numpy as np
import pytest

from pg_jax import predict_fns
from pg_jax.evaluators import anls, common
from pg_jax.pp.tokenizer import Tokenizer
from tests import tiny_model

RES = 28  # 2x2 patches of 14: the smallest image the tiny ViT takes.


@pytest.fixture(scope="module")
def model_and_params():
    return tiny_model.make("tiny_pg1", res=RES, vocab_size=Tokenizer().vocab_size)


def _eval_pp(text_len: int) -> str:
    from configs import docvqa

    return docvqa.get_config(f"res={RES},text_len={text_len}").evals["docvqa/val"]["pp_fn"]


def _evaluator(model, synth, workdir, split="val", limit=6, **kw):
    data = {"name": "docvqa_json", "path": os.path.join(synth, "docvqa"), "split": split}
    evals = {
        f"docvqa/{split}": {
            "type": "vqa",
            "every_steps": 10,
            "data": {**data, "limit": limit},
            "pp_fn": _eval_pp(text_len=24),
            "batch_size": 4,  # 6 questions: the second batch is padded with 2 masked rows.
            "pred_kw": {"max_decode_len": 5},
            **kw,
        }
    }
    ((evaluator, every),) = common.from_config(
        evals, model=model, tokenizer=None, workdir=workdir
    ).values()
    assert every == 10
    return evaluator


def test_random_model_predictions_json_and_report(model_and_params, synth, tmp_path):
    model, params = model_and_params
    ev = _evaluator(model, synth, str(tmp_path), report=True)
    metrics = dict(ev.run({"params": params}))  # a train state is accepted too
    assert metrics["docvqa/val/num"] == 6

    with open(tmp_path / "docvqa_val.json") as f:
        records = json.load(f)
    assert len(records) == 6 and len({r["questionId"] for r in records}) == 6
    for r in records:
        assert set(r) == {"questionId", "answer", "question", "answers", "question_types", "anls"}
        assert r["answers"] and r["question"].endswith("?") and r["question_types"]
        assert r["anls"] == anls.anls(r["answer"], r["answers"])
    mean = sum(r["anls"] for r in records) / 6
    assert metrics["docvqa/val/anls"] == pytest.approx(mean)

    page = (tmp_path / "docvqa_val.html").read_text()
    for r in records:
        assert html.escape(r["question"]) in page
    # 6 page thumbnails + 2 summary plots, all valid PNGs.
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 8
    assert all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)


def test_scores_per_type_and_worst_first(model_and_params, synth, tmp_path):
    """A fake predict fn answers every other question right: exact scores, ordering, types."""
    model, params = model_and_params
    ev = _evaluator(model, synth, str(tmp_path), report=True)
    tok = ev.tok
    seen = []

    def fake_predict(params, batch, *, max_decode_len, eos_id):
        out = np.zeros((len(batch["text"]), max_decode_len), np.int32)
        for i, answers in enumerate(batch["answers"]):
            right = len(seen) % 2 == 0
            seen.append(right)
            text = answers[0].decode() if right else "zzzz"
            ids = (tok.encode(text) + [eos_id])[:max_decode_len]
            out[i, : len(ids)] = ids
        return out

    ev.predict = predict_fns.PredictFn(lambda p, b, model, **kw: fake_predict(p, b, **kw), model)
    metrics = dict(ev.run(params))
    records = ev.records
    right = [r for r in records if r["anls"] == 1.0]
    assert len(right) == 3 and len(records) == 6  # padded rows are not scored
    assert metrics["docvqa/val/anls"] == pytest.approx(0.5)
    assert metrics["docvqa/val/exact_match"] == pytest.approx(0.5)
    for t in {t for r in records for t in r["question_types"]}:
        of_type = [r["anls"] for r in records if t in r["question_types"]]
        assert metrics[f"docvqa/val/anls/{t}"] == pytest.approx(np.mean(of_type))
    # The report lists the wrong answers first.
    page = (tmp_path / "docvqa_val.html").read_text()
    order = [int(q) for q in re.findall(r'<div class="types">#(\d+)', page)]
    scores = {r["questionId"]: r["anls"] for r in records}
    assert [scores[q] for q in order] == sorted(scores[q] for q in order)


def test_split_without_answers_writes_test_server_json(model_and_params, synth, tmp_path):
    model, params = model_and_params
    ev = _evaluator(model, synth, str(tmp_path), split="test", limit=5)
    metrics = dict(ev.run(params))
    assert metrics["docvqa/test/num"] == 5
    assert "docvqa/test/anls" not in metrics
    with open(tmp_path / "docvqa_test.json") as f:
        records = json.load(f)
    assert len(records) == 5
    for r in records:
        assert set(r) == {"questionId", "answer"}
        assert isinstance(r["questionId"], int) and isinstance(r["answer"], str)
    assert not (tmp_path / "docvqa_test.html").exists()  # report is off by default


def test_refuses_a_tokenizer_that_does_not_fit(synth, tmp_path):
    model, _ = tiny_model.make("tiny_pg1", res=RES, vocab_size=500)
    with pytest.raises(ValueError, match=r"2413 pieces but the model has a vocabulary of 500"):
        _evaluator(model, synth, str(tmp_path))


def test_an_unknown_evaluator_argument_names_the_evaluator_and_the_key(synth, tmp_path):
    """A typo in an evals entry is a config error, not silently ignored."""
    model, _ = tiny_model.make("tiny_pg1", res=RES, vocab_size=Tokenizer().vocab_size)
    with pytest.raises(ValueError, match=r"config.evals\['docvqa/val'\]: the 'vqa' evaluator "
                       r"takes no argument 'max_decode_lenght'"):
        _evaluator(model, synth, str(tmp_path), max_decode_lenght=4)
    with pytest.raises(ValueError, match=r"'perplexity' evaluator takes no argument 'report'"):
        common.from_config({"p": {"type": "perplexity", "data": {}, "pp_fn": "", "report": True}},
                           model=model, tokenizer=None, workdir=None)


def test_a_single_answer_set_without_types_is_scored_without_a_breakdown():
    """The evaluator is generic: a batch with one ``answer`` per question and no question
    types or question text scores ANLS over those answers and has no per-type metrics."""
    import types

    from pg_jax.evaluators import vqa

    tok = Tokenizer()

    class Batches:  # what EvalData hands an evaluator
        source = types.SimpleNamespace(num_examples_for=lambda i, n: 3)

        def batches(self):
            yield {"question_id": np.array([1, 2, 3, 3]), "text": np.zeros((4, 2), np.int32),
                   "answer": np.array([b"ab", b"cd", b"ab cd", b"ab cd"]),
                   "truncated": np.zeros(4, np.int32), "_mask": np.array([1, 1, 1, 0], bool)}

        def num_batches(self):
            return 1

    def always_ab(params, batch, *, model, max_decode_len, eos_id):
        ids = tok.encode("ab") + [eos_id]
        return np.array([ids] * len(batch["text"]), np.int32)

    ev = vqa.Evaluator({"decode": predict_fns.PredictFn(always_ab, None)}, Batches(),
                       tokenizer=tok, workdir=None, prefix="pages/val")
    metrics = dict(ev.run({}))
    # "ab" vs "ab cd": distance 3 of 5, NL 0.6 >= 0.5 -> 0.
    assert metrics["pages/val/anls"] == pytest.approx(1 / 3) and metrics["pages/val/num"] == 3
    assert not [k for k in metrics if k.startswith("pages/val/anls/")]
    assert [r["answers"] for r in ev.records] == [["ab"], ["cd"], ["ab cd"]]


def test_perplexity_loss_is_the_train_loss(model_and_params, synth):
    """The perplexity evaluator reduces the train step's answer NLL: on a batch with no padding
    its loss is `step.loss_fn`'s, and its perplexity exp of the token-level mean."""
    from configs import docvqa
    from pg_jax import step

    model, params = model_and_params
    pp = docvqa.get_config(f"res={RES},text_len=16").input.pp
    data = {"name": "docvqa_json", "path": os.path.join(synth, "docvqa"), "split": "val",
            "limit": 4}
    ((ev, _),) = common.from_config(
        {"p": {"type": "perplexity", "data": data, "pp_fn": pp, "batch_size": 4, "loss_len": 4}},
        model=model, tokenizer=None, workdir=None).values()
    metrics = dict(ev.run(params))
    (batch,) = list(ev.data.batches())
    assert batch["_mask"].all()
    inputs = {k: batch[k] for k in ("image", "text", "mask_ar", "mask_loss", "mask_input")}
    loss, _ = step.loss_fn(params, inputs, model=model, loss_len=4)
    nll, tokens, _ = step.answer_nll(params, inputs, model=model, loss_len=4)
    assert metrics["p/loss"] == pytest.approx(float(loss), rel=1e-5)
    assert metrics["p/perplexity"] == pytest.approx(float(np.exp(nll.sum() / tokens.sum())),
                                                    rel=1e-5)
