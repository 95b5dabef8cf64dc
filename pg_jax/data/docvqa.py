"""DocVQA readers: HF parquet shards and the original JSON release.

Getting the data:
  - HF: `huggingface-cli download HuggingFaceM4/DocumentVQA --repo-type dataset --local-dir D`
    gives `D/data/{train,validation,test}-*.parquet` (about 60 GB in all). Pass `path=D`.
  - Original release (rrc.cvc.uab.es, DocVQA Task 1): unpack so that `D/train/train_v1.0.json`
    and `D/train/documents/*.png` exist (likewise `val`, `test`). Pass `path=D`.
  - Neither: `pg_jax.data.synthetic.ensure_synthetic()` writes a small synthetic set in both
    layouts.
Then prepare a subset once: `python -m pg_jax.prepare_data --source hf-parquet --input D
--split train --limit 2000 --res 448 --out /tmp/docvqa_448` and train from that cache.

Both readers select the same way: `limit` and/or `fraction` of the records that pass the checks;
with `sample_seed` a seeded random subset (kept in file order), else the first ones; optionally only
records with one of `question_types`. They skip and count (reason -> count, first few named):
empty question, a non-test record without answers, a missing or undecodable image. A file that is
not DocVQA is refused with a ValueError naming the file and the missing columns or keys; so is text
that is not UTF-8 (naming the file and the row or byte offset) and a parquet text column of
another arrow type than string or binary (binary columns are decoded as UTF-8).

The parquet reader streams: pass 1 reads only the small columns, pass 2 reads the image column one
row group at a time and only row groups holding selected rows.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import io
import json
import os
import random
from collections.abc import Iterator, Sequence

from pg_jax.pp.registry import Registry

HF_COLUMNS = (
    "questionId",
    "question",
    "question_types",
    "image",
    "docId",
    "ucsf_document_id",
    "ucsf_document_page_no",
    "answers",
)
JSON_KEYS = ("questionId", "question", "image", "docId")
# What a VQA set in the HF parquet layout needs (the rest of HF_COLUMNS is optional there).
VQA_COLUMNS = ("questionId", "question", "image", "answers")
_META_COLUMNS = [c for c in HF_COLUMNS if c != "image"]
_TEXT_COLUMNS = ("question",)  # Strings (or UTF-8 bytes).
_TEXT_LIST_COLUMNS = ("answers", "question_types")  # Lists of strings (or of UTF-8 bytes).
_IMAGE_REASONS = ("missing_image", "undecodable_image")  # Found only when pages are read.
_FIRST_NAMED = 5  # Skipped records named per reason (ids), enough to find the culprit.


@dataclasses.dataclass
class Example:
    """One question; `image` holds encoded page bytes once loaded."""

    question_id: int
    question: str
    answers: list[str]
    question_types: list[str]
    doc_id: int
    image_key: str  # Identifies the page: questions sharing it share one decode.
    image: bytes | None = None


class Skips:
    """Skip counter: reason -> count, the first few record ids per reason, and every skipped
    question (an evaluator must still answer each questionId of a split).

    A record is counted once per reason however often it is skipped, so a training run that
    passes over a bad page every epoch still reports it once.
    """

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.first: dict[str, list[str]] = collections.defaultdict(list)
        self._seen: set[tuple[str, str]] = set()
        # {"questionId", "question", "answers", "question_types", "reason"} per skipped record.
        self.questions: list[dict] = []

    def add(self, reason: str, what: str, record: dict | Example | None = None) -> None:
        if (reason, what) in self._seen:
            return
        self._seen.add((reason, what))
        self.counts[reason] += 1
        if len(self.first[reason]) < _FIRST_NAMED:
            self.first[reason].append(what)
        if isinstance(record, Example):
            record = {"questionId": record.question_id, "question": record.question,
                      "answers": record.answers, "question_types": record.question_types}
        if record is not None:
            qid = record.get("questionId")
            self.questions.append({
                "questionId": int(qid) if str(qid).lstrip("-").isdigit() else qid,
                "question": str(record.get("question") or ""),
                "answers": [str(a) for a in (record.get("answers") or [])],
                "question_types": [str(t) for t in (record.get("question_types") or [])],
                "reason": reason,
            })

    def as_dict(self) -> dict:
        return {r: {"count": n, "first": self.first[r]} for r, n in sorted(self.counts.items())}

    def describe(self) -> str:
        """One line per reason: `  reason: count (first: id, id, ...)`."""
        return "".join(
            f"\n  {r}: {d['count']} (first: {', '.join(d['first'])})"
            for r, d in self.as_dict().items()
        )

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def image_ok(data: bytes) -> bool:
    """Whether `data` parses as an image (PIL header check plus verify, without a full decode)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for bad files; all mean "skip".
        return False


def _check_text(rec: dict, split: str, skips: Skips) -> bool:
    qid = rec.get("questionId")
    if not str(rec.get("question") or "").strip():
        skips.add("empty_question", f"questionId={qid}", rec)
        return False
    if split != "test" and not [a for a in (rec.get("answers") or []) if str(a).strip()]:
        skips.add("no_answers", f"questionId={qid}", rec)
        return False
    return True


def _select(
    n: int, limit: int | None, fraction: float | None, sample_seed: int | None
) -> list[int]:
    """Indices of the selected records among n candidates, in file order."""
    k = n
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        k = min(k, round(n * fraction))
    if limit is not None:
        k = min(k, limit)
    if sample_seed is None:
        return list(range(k))
    return sorted(random.Random(sample_seed).sample(range(n), k))


class _Reader:
    """Selection and bookkeeping shared by both readers."""

    name: str  # The registered data source name.
    location: str  # The path it was given.
    split: str
    skips: Skips
    num_read: int
    whole_split: bool
    _selected: list[Example]

    @property
    def num_examples(self) -> int:
        return len(self._selected)

    def selected_answers(self) -> list[list[str]]:
        """Ground-truth answers of the selected records (metadata only, no image reads)."""
        return [list(ex.answers) for ex in self._selected]

    def num_examples_for(self, shard_index: int, shard_count: int) -> int:
        return len(range(shard_index, self.num_examples, shard_count))

    def _finish_selection(
        self,
        candidates: list[Example],
        limit,
        fraction,
        sample_seed,
        question_types: Sequence[str] | None,
    ) -> list[Example]:
        # Whether every readable record of the split is selected: then the records skipped
        # while reading belong to the selection too (an evaluator scores them 0).
        self.whole_split = not question_types and limit is None and fraction is None
        if question_types:
            wanted = set(question_types)
            candidates = [e for e in candidates if wanted & set(e.question_types)]
        return [candidates[i] for i in _select(len(candidates), limit, fraction, sample_seed)]

    def skip_report(self, after_first_pass: bool = False) -> str:
        """What was read, kept and skipped (reason -> count, first few named), for the log.

        Pages are only checked as they are read, so before the first pass "kept" counts the
        selected records whose text passed the checks.
        """
        image_skips = sum(self.skips.counts[r] for r in _IMAGE_REASONS)
        unselected = self.num_read - (self.skips.total - image_skips) - self.num_examples
        when = (", after the first pass over the pages" if after_first_pass
                else " (pages are checked as they are read)")  # fmt: skip
        return (
            f"{self.name} {self.location} [{self.split}]{when}: read {self.num_read} records, "
            f"kept {self.num_examples - image_skips}, skipped {self.skips.total}"
            + (f", not selected {unselected}" if unselected else "")
            + self.skips.describe()
        )

    def iter_examples(self) -> Iterator[Example]:
        raise NotImplementedError

    def get_tfdata(self, *, shard_index: int = 0, shard_count: int = 1):
        """One epoch of encoded pages (undecodable ones skipped) as a tf.data.Dataset."""
        import tensorflow as tf

        def gen():
            for i, ex in enumerate(self.iter_examples()):
                if i % shard_count != shard_index:
                    continue
                # Bad images must not reach tf's decoder, which would stop the whole pipeline.
                if not image_ok(ex.image):
                    self.skips.add("undecodable_image", f"questionId={ex.question_id}", ex)
                    continue
                yield {
                    "question_id": ex.question_id,
                    "question": ex.question,
                    "answers": ex.answers,
                    "question_types": ex.question_types,
                    "doc_id": ex.doc_id,
                    "image": ex.image,
                }

        sig = {
            "question_id": tf.TensorSpec([], tf.int64),
            "question": tf.TensorSpec([], tf.string),
            "answers": tf.TensorSpec([None], tf.string),
            "question_types": tf.TensorSpec([None], tf.string),
            "doc_id": tf.TensorSpec([], tf.int64),
            "image": tf.TensorSpec([], tf.string),
        }
        return tf.data.Dataset.from_generator(gen, output_signature=sig)


@Registry.register("datasets.docvqa_hf")
class HFParquetDocVQA(_Reader):
    """HuggingFaceM4/DocumentVQA parquet shards of one split, or another VQA set in the same
    layout whose columns are named otherwise (``columns``; see `register_parquet_vqa`)."""

    name = "docvqa_hf"

    def __init__(
        self,
        path: str,
        split: str = "train",
        *,
        limit: int | None = None,
        fraction: float | None = None,
        sample_seed: int | None = None,
        question_types: Sequence[str] | None = None,
        columns: dict[str, str] | None = None,
        name: str = "docvqa_hf",
    ):
        """Reads the metadata of the split and selects records.

        Args:
          path: directory holding `{split}-*.parquet` (searched recursively), or one .parquet file.
          split: "train", "validation" (alias "val") or "test".
          limit, fraction, sample_seed, question_types: selection, see the module docstring.
          columns: {DocVQA column (HF_COLUMNS): this file's column}, for a set whose columns are
            named otherwise; then only VQA_COLUMNS are required, and an answers column of plain
            strings is one answer per question. None: DocVQA's names, all of HF_COLUMNS.
          name: the data set's registered name (in messages).
        """
        import pyarrow.parquet as pq

        self.name = name
        self.split = {"val": "validation"}.get(split, split)
        self.location = path
        self.files = _parquet_files(path, self.split)
        self.skips, self.num_read = Skips(), 0
        self._columns = {c: c for c in HF_COLUMNS} | dict(columns or {})
        candidates, self._where = [], {}
        for f in self.files:
            pf = pq.ParquetFile(f)
            have = pf.schema_arrow.names
            required = HF_COLUMNS if columns is None else VQA_COLUMNS
            missing = [self._columns[c] for c in required if self._columns[c] not in have]
            if missing:
                what = "HuggingFaceM4/DocumentVQA" if columns is None else f"{name}"
                raise ValueError(
                    f"{f} is not {what} parquet: missing columns {missing} (has {have})."
                )
            meta = {c: self._columns[c] for c in _META_COLUMNS if self._columns[c] in have}
            _check_text_types(f, pf.schema_arrow, meta)
            row = 0
            for batch in pf.iter_batches(columns=list(meta.values()), batch_size=4096):
                for file_rec in batch.to_pylist():
                    rec = {c: file_rec[col] for c, col in meta.items()}
                    if isinstance(rec["answers"], (str, bytes)):  # one answer per question
                        rec["answers"] = [rec["answers"]]
                    _decode_text(rec, f, row)
                    self.num_read += 1
                    if _check_text(rec, self.split, self.skips):
                        ex = _example(rec, str(rec.get("docId", f"q{rec['questionId']}")))
                        candidates.append(ex)
                        self._where[ex.question_id] = (f, row)
                    row += 1
        self._selected = self._finish_selection(
            candidates, limit, fraction, sample_seed, question_types
        )

    def iter_examples(self) -> Iterator[Example]:
        """Yields the selected examples in file order with their page bytes loaded."""
        import pyarrow.parquet as pq

        by_file = collections.defaultdict(list)
        for ex in self._selected:
            by_file[self._where[ex.question_id][0]].append(ex)
        for f in self.files:
            if not by_file[f]:
                continue
            pf = pq.ParquetFile(f)
            starts, s = [], 0
            for g in range(pf.num_row_groups):
                starts.append(s)
                s += pf.metadata.row_group(g).num_rows
            todo = collections.defaultdict(list)
            for ex in by_file[f]:
                row = self._where[ex.question_id][1]
                g = max(i for i, st in enumerate(starts) if st <= row)
                todo[g].append((row - starts[g], ex))
            for g in sorted(todo):  # One row group's images in memory at a time.
                image_column = self._columns["image"]
                images = pf.read_row_group(g, columns=[image_column]).column(image_column)
                for offset, ex in todo[g]:
                    img = images[offset].as_py() or {}
                    if isinstance(img, bytes):  # a plain binary column instead of HF's struct
                        img = {"bytes": img}
                    if not img.get("bytes"):
                        self.skips.add("missing_image", f"questionId={ex.question_id}", ex)
                        continue
                    ex.image = img["bytes"]
                    yield ex
                    ex.image = None  # Do not keep pages alive through the selection list.


@Registry.register("datasets.docvqa_json")
class JsonDocVQA(_Reader):
    """The original DocVQA release: `{split}/{split}_v1.0[_withQT].json` + `documents/`."""

    name = "docvqa_json"

    def __init__(
        self,
        path: str,
        split: str = "train",
        *,
        limit: int | None = None,
        fraction: float | None = None,
        sample_seed: int | None = None,
        question_types: Sequence[str] | None = None,
    ):
        """Reads the split's JSON and selects records.

        Args:
          path: release root (holding `{split}/`), the split directory, or the JSON file itself.
          split: "train", "val" (alias "validation") or "test".
          limit, fraction, sample_seed, question_types: selection, see the module docstring.
        """
        self.split = {"validation": "val"}.get(split, split)
        self.location = path
        self.json_path = _json_file(path, self.split)
        self.root = os.path.dirname(self.json_path)
        doc = _read_json(self.json_path)
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise ValueError(
                f"{self.json_path} is not DocVQA JSON: missing top-level key 'data' "
                "(a list of question records)."
            )
        self.skips, self.num_read = Skips(), 0
        candidates = []
        for rec in doc["data"]:
            missing = [k for k in JSON_KEYS if k not in rec] if isinstance(rec, dict) else JSON_KEYS
            if missing:
                raise ValueError(
                    f"{self.json_path} is not DocVQA JSON: a record lacks keys "
                    f"{list(missing)}: {str(rec)[:200]}"
                )
            self.num_read += 1
            if _check_text(rec, "test" if self.split == "test" else "train", self.skips):
                candidates.append(_example(rec, rec["image"]))
        selected = self._finish_selection(candidates, limit, fraction, sample_seed, question_types)
        # Group questions of one page together (stable): pages are then decoded once, in a row.
        self._selected = sorted(selected, key=lambda e: e.image_key)

    def iter_examples(self) -> Iterator[Example]:
        """Yields the selected examples (grouped by page) with their page bytes loaded."""
        for ex in self._selected:
            p = os.path.join(self.root, ex.image_key)
            if not os.path.isfile(p):
                self.skips.add(
                    "missing_image", f"questionId={ex.question_id} ({ex.image_key})", ex
                )
                continue
            with open(p, "rb") as f:
                ex.image = f.read()
            yield ex
            ex.image = None


def _read_json(path: str):
    """The parsed JSON file; undecodable text is refused naming the file, line and byte offset."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")  # JSON is UTF-8; tolerate a byte-order mark.
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path} is not UTF-8 text: byte offset {e.start} (line {line}) holds "
            f"{data[e.start : e.end]!r} ({e.reason}). Re-save the file as UTF-8."
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not DocVQA JSON: {e}") from e


def _check_text_types(path: str, schema, columns: dict[str, str]) -> None:
    """Refuses text columns that are neither strings nor bytes, naming the column and type."""
    import pyarrow as pa

    def texty(t):  # null: a column with no values at all, e.g. empty answer lists.
        kinds = ("is_string", "is_large_string", "is_binary", "is_large_binary", "is_null")
        return any(getattr(pa.types, kind)(t) for kind in kinds)

    def listy(t):
        return pa.types.is_null(t) or (
            (pa.types.is_list(t) or pa.types.is_large_list(t)) and texty(t.value_type)
        )

    for column, ok, want in [(c, texty, "string") for c in _TEXT_COLUMNS] + [
        (c, listy, "list<string>") for c in _TEXT_LIST_COLUMNS
    ]:
        if column not in columns:
            continue
        column = columns[column]
        t = schema.field(column).type
        if column == columns.get("answers") and texty(t):
            continue  # one answer per question
        if not ok(t):
            raise ValueError(
                f"{path}: column {column!r} has arrow type {t}; DocVQA needs {want} "
                "(or binary holding UTF-8 text)."
            )


def _decode_text(rec: dict, path: str, row: int) -> None:
    """Decodes, in place, the text columns of a record that a binary column gave as bytes."""

    def text(value, column):
        if not isinstance(value, bytes):
            return value
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}: column {column!r} row {row} (questionId={rec.get('questionId')}) is "
                f"not UTF-8 text: byte {e.start} is {value[e.start : e.end]!r} ({e.reason})."
            ) from None

    for column in _TEXT_COLUMNS:
        rec[column] = text(rec[column], column)  # required: present in every record
    for column in _TEXT_LIST_COLUMNS:
        if rec.get(column) is not None:
            rec[column] = [text(v, column) for v in rec[column]]


def _example(rec: dict, image_key: str) -> Example:
    return Example(
        question_id=int(rec["questionId"]),
        question=str(rec["question"]).strip(),
        answers=[str(a) for a in (rec.get("answers") or [])],
        question_types=[str(t) for t in (rec.get("question_types") or [])],
        doc_id=int(rec.get("docId") or 0),
        image_key=image_key,
    )


def _parquet_files(path: str, split: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No such file or directory: {path}")
    files = sorted(glob.glob(os.path.join(path, "**", f"{split}-*.parquet"), recursive=True))
    if not files:
        found = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))[:5]
        raise FileNotFoundError(f"No {split}-*.parquet under {path} (found {found or 'none'}).")
    return files


def _json_file(path: str, split: str) -> str:
    if os.path.isfile(path):
        return path
    for d in (os.path.join(path, split), path):
        for name in (f"{split}_v1.0_withQT.json", f"{split}_v1.0.json"):
            if os.path.isfile(os.path.join(d, name)):
                return os.path.join(d, name)
    raise FileNotFoundError(f"No {split}/{split}_v1.0[_withQT].json under {path}.")


def register_parquet_vqa(name: str, columns: dict[str, str]) -> None:
    """Registers ``name`` as a VQA set in the HF parquet layout with other column names.

    ``config.input.data = {"name": name, "path": D, "split": "train"}`` then reads
    ``D/**/{split}-*.parquet``. ``columns`` maps DocVQA's column names (``VQA_COLUMNS`` at least:
    questionId, question, image, answers) to the file's; an image column is HF's
    ``{"bytes", "path"}`` struct or plain bytes, an answers column a list of strings or one.
    """
    import functools

    Registry.register(f"datasets.{name}")(
        functools.partial(HFParquetDocVQA, columns=dict(columns), name=name))
