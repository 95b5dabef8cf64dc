"""VQA evaluator: decode answers for one split, score them with ANLS, write predictions.

Config entry (see ``pg_jax.evaluators.common``)::

    config.evals["docvqa/val"] = dict(
        type="vqa", every_steps=500,
        data=dict(name="docvqa", path="/data/docvqa", split="val", limit=512),
        pp_fn="decode|resize(448)|...|keep('image', 'text', ..., 'answers', 'question_id')",
        batch_size=16,
        pred="decode", max_decode_len=32,  # pred_kw=dict(sampler=...) for others
        report=False,             # also write an HTML report (pg_jax.report)
    )

Generic over the data set: the batches hold ``question_id`` and either ``answers`` (the
accepted answers, padded with "") or a single ``answer``; with ``question_types`` (padded with
"") the metrics break ANLS down per type, and with ``question`` the records and report show it.

``run(params)`` yields ``("docvqa/val/anls", x)`` (over every question of the selection, those
the reader skipped scoring 0), ``.../anls_scored`` (over the decoded ones only, as are
``.../anls_big_vision``, ``.../exact_match`` and ``.../anls/<question type>``), ``.../num``,
``.../num_skipped`` (and ``.../num_skipped/<reason>``), ``.../num_truncated`` and
``.../examples_per_sec``, and writes
``{workdir}/docvqa_val.json``: one record per question (``questionId``, ``answer``, ``answers``,
``anls``, ``question``, ``question_types``; ``skipped``: the reason, for a question the reader
could not use, answered ""). For a split without answers (DocVQA test) nothing is scored and the
file is the evaluation server's ``[{"questionId": int, "answer": str}]``, holding every
questionId of the split (skipped ones with an empty answer, and a warning is printed).

Multi-host: each host decodes its shard of the split; the metrics are sums of per-host
statistics divided once at the end (a mean of host means would weight hosts, not questions), and
host 0 merges the per-host prediction files.

Semantics follow big_vision ``evaluators/proj/paligemma/transfers/vqa.py``: padding rows of the
last batch (``_mask`` False) are skipped; detokenisation stops at eos.
"""

from __future__ import annotations

import collections
import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from pg_jax.evaluators import anls as anls_lib
from pg_jax.evaluators import common

# DocVQA's nine question types: a fixed order so every host sums the same statistics vector.
DOCVQA_TYPES = (
    "figure/diagram", "form", "free_text", "handwritten", "layout", "others", "table/list",
    "Image/Photo", "Yes/No",
)  # fmt: skip
# Why a reader skips a question (pg_jax.data.docvqa); a fixed order for the cross-host sum.
SKIP_REASONS = ("empty_question", "no_answers", "missing_image", "undecodable_image")


def _strs(x) -> list[str]:
    """bytes/str numpy array -> list of non-empty Python strings (drops the "" padding)."""
    out = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.ravel(x)]
    return [v for v in out if v]


def thumbnail_png(image: np.ndarray, size: int = 192) -> bytes:
    """float[R, R, 3] in [-1, 1] (what the model saw) -> PNG bytes of a size x size thumbnail."""
    from PIL import Image

    arr = np.clip((np.asarray(image, np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr).resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def process_sum(x: np.ndarray) -> np.ndarray:
    """Sums a float64 vector over hosts (identity on one host)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.sum(multihost_utils.process_allgather(x), axis=0)


class Evaluator:
    """Decodes one DocVQA split and scores it; see the module docstring."""

    def __init__(
        self,
        predict_fns: dict,
        data,
        *,
        tokenizer,
        workdir: str | None,
        prefix: str,
        pred: str = "decode",
        pred_kw: dict | None = None,
        max_decode_len: int = 32,
        report: bool = False,
        report_rows: int = 500,
        progress: bool | None = None,
        baseline_data: dict | None = None,
    ):
        """Keeps the handed-in predict function and data.

        Args:
          predict_fns: ``pg_jax.predict_fns.get_all(model)``; ``pred`` names the one used.
          data: the split's ``EvalData`` (``pg_jax.evaluators.common``).
          tokenizer: the ``Tokenizer`` that detokenises the answers (the model's vocabulary).
          workdir: where ``{stem}.json`` (and ``{stem}.html``) go; None writes nothing.
          prefix: metric prefix, e.g. "docvqa/val"; the file stem is prefix with "/" -> "_".
          pred: name in ``predict_fns``; pred_kw its keyword arguments (default greedy).
          max_decode_len: answer tokens at most (``pred_kw["max_decode_len"]`` wins).
          report: also write an HTML report with page thumbnails (costs a PNG per question).
          report_rows: questions shown in the report, worst first.
          progress: tqdm progress bar; None shows it for runs of 20 batches or more.
          baseline_data: a training source spec; on the first run also yield
            ``baseline_anls``, the score of an image-blind model that always gives the most
            common training answer (``self.baseline_answer``).
        """
        if pred not in predict_fns:
            raise ValueError(f"{prefix}: pred={pred!r}; known: {sorted(predict_fns)}")
        self.prefix, self.workdir, self.data = prefix, workdir, data
        self.tok = tokenizer
        self.source = data.source
        skips = getattr(self.source, "skips", None)  # a prepared cache has none left to skip
        # Questions skipped while reading the metadata (empty question, no answers): the same
        # on every host. They are answered "" and scored 0 when the whole split is evaluated.
        self._read_skips = list(skips.questions) if skips is not None else []
        self._read_skips_counted = bool(getattr(self.source, "whole_split", False))
        self._noted = False
        self.predict = predict_fns[pred]
        kw = {"max_decode_len": max_decode_len, "eos_id": self.tok.eos_id}
        self.pred_kw = {**kw, **(pred_kw or {})}
        self.report, self.report_rows, self.progress = report, report_rows, progress
        self.stem = common.metric_file_stem(prefix)
        self.baseline_data = baseline_data
        self.baseline_answer: str | None = None
        # Filled by run(), for the evaluate CLI and tests.
        self.records: list[dict] = []
        self.outputs: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------
    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        """Decodes and scores the split once.

        Args:
          params: model params (or a train state dict holding "params").

        Yields:
          (f"{prefix}/{metric}", value) pairs; see the module docstring.
        """
        if isinstance(params, dict) and "params" in params and "img" not in params:
            params = params["params"]  # Accept the trainer's {"params", "opt"} state too.
        params = self.predict.prepare(params)  # once per run (decoding's layout)
        from tqdm import tqdm

        t0 = time.perf_counter()
        total = self.data.num_batches()
        show = self.progress if self.progress is not None else total >= 20
        show = show and jax.process_index() == 0
        records, thumbs, totals = [], {}, anls_lib.Totals()
        num_truncated = 0
        skips = getattr(self.source, "skips", None)
        for batch in tqdm(self.data.batches(), total=total, desc=self.prefix, disable=not show):
            tokens = np.asarray(jax.device_get(self.predict(params, batch, **self.pred_kw)))
            for i in np.flatnonzero(batch["_mask"]):
                qid = int(batch["question_id"][i])
                answers = _strs(batch["answers"][i] if "answers" in batch
                                else batch["answer"][i : i + 1])
                types = _strs(batch["question_types"][i]) if "question_types" in batch else []
                rec = {
                    "questionId": qid,
                    "answer": self.tok.decode(tokens[i]),
                    "question": (_strs(batch["question"][i : i + 1]) or [""])[0]
                    if "question" in batch else "",
                    "answers": answers,
                    "question_types": types,
                }
                if answers:
                    rec["anls"] = totals.add(rec["answer"], answers, types)
                num_truncated += int(batch["truncated"][i])
                records.append(rec)
                if self.report and self.workdir:
                    thumbs[qid] = thumbnail_png(batch["image"][i])
        seconds = time.perf_counter() - t0
        # This host's questions skipped while reading its pages (each recorded once, on the
        # first run: the same pages fail on every run), then (host 0) the metadata ones.
        skipped = skips.questions[len(self._read_skips):] if skips is not None else []
        if self._read_skips_counted and jax.process_index() == 0:
            skipped = skipped + self._read_skips
        for q in skipped:
            rec = {"questionId": q["questionId"], "answer": "", "question": q["question"],
                   "answers": q["answers"], "question_types": q["question_types"],
                   "skipped": q["reason"]}
            if q["answers"]:
                rec["anls"] = 0.0
            records.append(rec)
        skip_counts = [sum(q["reason"] == r for q in skipped) for r in SKIP_REASONS]
        skip_counts.append(len(skipped) - sum(skip_counts))  # other reasons
        scoreable_skips = sum(bool(q["answers"]) for q in skipped)

        types = (
            sorted(set(DOCVQA_TYPES) | set(totals.by_type))
            if jax.process_count() == 1
            else DOCVQA_TYPES
        )  # Other hosts may know other types; sum a fixed vector.
        tail = [len(records) - len(skipped), num_truncated, scoreable_skips, *skip_counts]
        summed = process_sum(np.concatenate([totals.as_array(types), tail]))
        n_tail = len(tail)
        totals = anls_lib.Totals.from_array(summed[:-n_tail], types)
        num, num_truncated, scoreable_skips = (int(v) for v in summed[-n_tail:][:3])
        skip_counts = dict(zip((*SKIP_REASONS, "other"), (int(v) for v in summed[-n_tail:][3:])))
        metrics = totals.metrics() if totals.count else {}
        if totals.count:
            # "anls" counts every question of the selection, skipped ones scoring 0;
            # "anls_scored" only those decoded (the per-type breakdown and exact match too).
            metrics["anls_scored"] = metrics["anls"]
            metrics["anls"] = totals.anls / (totals.count + scoreable_skips)
        metrics.update(num=num, num_truncated=num_truncated, examples_per_sec=num / seconds)
        metrics["num_skipped"] = sum(skip_counts.values())
        metrics.update({f"num_skipped/{r}": n for r, n in skip_counts.items() if n})
        self._say_skipped(skip_counts, skipped)
        if self.baseline_data is not None and totals.count:
            metrics.update(self._baseline(records))
        self.records = records
        self._write(records, thumbs, metrics, scored=totals.count > 0)
        for name, value in metrics.items():
            yield f"{self.prefix}/{name}", value

    def _say_skipped(self, counts: dict[str, int], skipped: list[dict]) -> None:
        """One warning line naming the skipped questions by reason (host 0)."""
        if jax.process_index() != 0:
            return
        parts = []
        for reason, n in counts.items():
            if n:
                ids = [str(q["questionId"]) for q in skipped if q["reason"] == reason][:5]
                parts.append(f"{reason} {n}" + (f" (questionId {', '.join(ids)}"
                                                 f"{', ...' if n > len(ids) else ''})" if ids else ""))
        if parts:
            print(f"WARNING {self.prefix}: skipped {sum(counts.values())} question(s): "
                  f"{'; '.join(parts)}. They are answered \"\" in the predictions file and score "
                  "0 in anls (anls_scored leaves them out).", flush=True)
        if self._read_skips and not self._read_skips_counted and not self._noted:
            self._noted = True
            n = len(self._read_skips)
            print(f"note {self.prefix}: {n} question(s) of the split were skipped while reading "
                  "it (empty question or no answers); with a selection (limit, fraction, "
                  "question types) they are not part of it.", flush=True)

    def _baseline(self, records: list[dict]) -> dict[str, float]:
        """ANLS of always answering the most common training answer (computed once)."""
        from pg_jax.data import core

        spec, self.baseline_data = dict(self.baseline_data), None
        train = core.get(spec.pop("name"), **spec)
        if not hasattr(train, "selected_answers"):  # e.g. a prepared cache: no metadata pass
            return {}
        counts = collections.Counter(a[0] for a in train.selected_answers() if a)
        if not counts:
            return {}
        self.baseline_answer = counts.most_common(1)[0][0]
        scores = [anls_lib.anls(self.baseline_answer, r["answers"]) for r in records
                  if r["answers"]]
        return {"baseline_anls": float(np.mean(scores))}

    # ------------------------------------------------------------------------------------------
    def _write(self, records: list[dict], thumbs: dict, metrics: dict, scored: bool) -> None:
        """Writes the predictions JSON (merged over hosts) and, if asked, the HTML report."""
        if not self.workdir:
            return
        os.makedirs(self.workdir, exist_ok=True)
        path = os.path.join(self.workdir, f"{self.stem}.json")
        if not scored:  # The evaluation server wants exactly these two keys.
            records = [{"questionId": r["questionId"], "answer": r["answer"]} for r in records]
        records = _gather_json(path, records)
        if records is None:  # Not host 0.
            return
        _dump_json(path, records)
        self.outputs = {"predictions": path}
        if self.report:
            from pg_jax import report

            html = os.path.join(self.workdir, f"{self.stem}.html")
            report.write_html(
                html,
                self.records if jax.process_count() == 1 else records,
                thumbs,
                metrics=metrics,
                title=self.prefix,
                max_rows=self.report_rows,
            )
            self.outputs["report"] = html


def _dump_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)  # Atomic: a reader never sees half a file.


def _gather_json(path: str, records: list[dict]) -> list[dict] | None:
    """All hosts' records on host 0 (None elsewhere), through per-host files in the workdir.

    The workdir is shared by all hosts (it holds the checkpoints too), so files are the
    simplest channel for variable-length strings.
    """
    if jax.process_count() == 1:
        return records
    from jax.experimental import multihost_utils

    _dump_json(f"{path}.part{jax.process_index()}", records)
    multihost_utils.sync_global_devices(f"vqa_json:{path}")
    if jax.process_index() != 0:
        return None
    merged = []
    for i in range(jax.process_count()):
        with open(f"{path}.part{i}") as f:
            merged += json.load(f)
        os.remove(f"{path}.part{i}")
    return sorted(merged, key=lambda r: r["questionId"])
