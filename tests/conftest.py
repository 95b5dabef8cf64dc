"""Shared fixtures: tiny DocVQA inputs written in the exact on-disk formats."""

import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

# Import pg_jax from this checkout, not from another editable install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def png_bytes(h=40, w=30, value=128, mode="RGB") -> bytes:
    arr = np.full((h, w, 3) if mode == "RGB" else (h, w), value, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# Five records: good, good (same page), corrupt image, no answers, empty question.
RECORDS = [
    dict(
        questionId=10,
        question="What is the total?",
        answers=["$12", "12"],
        docId=1,
        question_types=["form"],
        page="a_1.png",
    ),
    dict(
        questionId=11,
        question="What is the date?",
        answers=["May 1"],
        docId=1,
        question_types=["layout"],
        page="a_1.png",
    ),
    dict(
        questionId=12,
        question="Corrupt page?",
        answers=["x"],
        docId=2,
        question_types=["form"],
        page="bad_1.png",
    ),
    dict(
        questionId=13,
        question="No answers?",
        answers=[],
        docId=3,
        question_types=["form"],
        page="c_1.png",
    ),
    dict(
        questionId=14,
        question="  ",
        answers=["y"],
        docId=3,
        question_types=["form"],
        page="c_1.png",
    ),
]
PAGES = {
    "a_1.png": png_bytes(value=10),
    "bad_1.png": b"\x89PNG not really",
    "c_1.png": png_bytes(value=200, mode="L"),
}


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> str:
    """HF parquet: train shard with the five records, plus a test shard without answers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("hf") / "data"
    d.mkdir()

    def table(recs, with_answers=True):
        return pa.table(
            {
                "questionId": [r["questionId"] for r in recs],
                "question": [r["question"] for r in recs],
                "question_types": [r["question_types"] for r in recs],
                "image": [{"bytes": PAGES[r["page"]], "path": r["page"]} for r in recs],
                "docId": [r["docId"] for r in recs],
                "ucsf_document_id": [r["page"][:1] for r in recs],
                "ucsf_document_page_no": ["1" for _ in recs],
                "answers": [r["answers"] if with_answers else [] for r in recs],
            }
        )

    pq.write_table(table(RECORDS), d / "train-00000-of-00001.parquet", row_group_size=2)
    pq.write_table(table(RECORDS[:2], False), d / "test-00000-of-00001.parquet")
    return str(d.parent)


@pytest.fixture(scope="session")
def tiny_json(tmp_path_factory) -> str:
    """Original release layout; c_1.png is missing on disk, bad_1.png is corrupt."""
    root = tmp_path_factory.mktemp("docvqa")
    for split in ("train", "test"):
        docs = root / split / "documents"
        docs.mkdir(parents=True)
        for name, data in PAGES.items():
            if name != "c_1.png":
                (docs / name).write_bytes(data)
        recs = []
        for r in RECORDS:
            rec = {
                "questionId": r["questionId"],
                "question": r["question"],
                "question_types": r["question_types"],
                "image": f"documents/{r['page']}",
                "docId": r["docId"],
                "ucsf_document_id": r["page"][:1],
                "ucsf_document_page_no": "1",
                "data_split": split,
            }
            if split != "test":
                rec["answers"] = r["answers"]
            recs.append(rec)
        with open(root / split / f"{split}_v1.0_withQT.json", "w") as f:
            json.dump({"dataset_name": "SP-DocVQA", "dataset_split": split, "data": recs}, f)
    return str(root)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> str:
    """A small synthetic set in both formats."""
    from pg_jax.data import synthetic

    out = str(tmp_path_factory.mktemp("synth"))
    synthetic.generate(out, seed=0, num_pages=30, workers=1)
    return out


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> str:
    """A tiny random PaliGemma 1 (28 px, the project tokenizer's vocabulary) as a big_vision .npz."""
    from pg_jax.models import exporter
    from pg_jax.pp.tokenizer import Tokenizer
    from tests import tiny_model

    _, params = tiny_model.make("tiny_pg1", res=28, vocab_size=Tokenizer().vocab_size)
    path = str(tmp_path_factory.mktemp("ckpt") / "params.npz")
    exporter.save_npz(params, path)
    return path
