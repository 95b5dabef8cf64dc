"""Bad data and damaged checkpoint files end in a message naming the file (and column, row, byte
offset or key), and the command-line tools exit non-zero with it instead of a traceback."""

import json
import os
import re
import struct
import zipfile

import flax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pg_jax
from pg_jax import export, predict, prepare_data
from pg_jax.data import core
from pg_jax.models import exporter
from pg_jax.models.npz_io import CheckpointError
from pg_jax.pp.tokenizer import Tokenizer
from tests import tiny_model
from tests.conftest import PAGES, RECORDS


def _write_parquet(path, records, **columns):
    """A DocVQA parquet of `records`; keyword arguments replace whole columns (arrow arrays)."""
    table = {
        "questionId": [r["questionId"] for r in records],
        "question": [r["question"] for r in records],
        "question_types": [r["question_types"] for r in records],
        "image": [{"bytes": PAGES[r["page"]], "path": r["page"]} for r in records],
        "docId": [r["docId"] for r in records],
        "ucsf_document_id": [r["page"][:1] for r in records],
        "ucsf_document_page_no": ["1" for _ in records],
        "answers": [r["answers"] for r in records],
        **columns,
    }
    pq.write_table(pa.table(table), path)
    return str(path)


def _binary(values):
    return pa.array([v.encode() for v in values], pa.binary())


def _binary_lists(lists):
    return pa.array([[v.encode() for v in vs] for vs in lists], pa.list_(pa.binary()))


# ---------------------------------------------------------------------------------------------
# Parquet text columns.
# ---------------------------------------------------------------------------------------------
def test_parquet_text_columns_holding_utf8_bytes_are_decoded(tmp_path):
    path = _write_parquet(
        tmp_path / "train-0.parquet",
        RECORDS,
        question=_binary([r["question"] for r in RECORDS]),
        answers=_binary_lists([r["answers"] for r in RECORDS]),
        question_types=_binary_lists([r["question_types"] for r in RECORDS]),
    )
    src = core.get("docvqa_hf", path=path, split="train")
    exs = src._selected
    assert [e.question for e in exs] == ["What is the total?", "What is the date?", "Corrupt page?"]
    assert exs[0].answers == ["$12", "12"] and exs[0].question_types == ["form"]
    assert src.skips.counts == {"no_answers": 1, "empty_question": 1}


@pytest.mark.parametrize(
    "column, values, arrow_type",
    [
        ("question", pa.array([1, 2, 3, 4, 5], pa.int64()), "int64"),
        ("answers", pa.array([[1], [2], [3], [], [4]], pa.list_(pa.int32())), ": int32>"),
    ],
)
def test_parquet_text_column_of_another_type_is_refused(tmp_path, column, values, arrow_type):
    path = _write_parquet(tmp_path / "train-0.parquet", RECORDS, **{column: values})
    with pytest.raises(ValueError) as e:
        core.get("docvqa_hf", path=path, split="train")
    msg = str(e.value)
    assert path in msg and f"column {column!r}" in msg and arrow_type in msg, msg


def test_parquet_non_utf8_text_names_file_column_and_row(tmp_path):
    questions = [r["question"].encode() for r in RECORDS]
    questions[2] = b"Corrupt \xff page?"
    path = _write_parquet(
        tmp_path / "train-0.parquet", RECORDS, question=pa.array(questions, pa.binary())
    )
    with pytest.raises(ValueError) as e:
        core.get("docvqa_hf", path=path, split="train")
    msg = str(e.value)
    assert path in msg and "column 'question'" in msg and "row 2" in msg, msg
    assert "not UTF-8" in msg and "byte 8" in msg, msg


# ---------------------------------------------------------------------------------------------
# JSON release.
# ---------------------------------------------------------------------------------------------
def test_json_release_with_non_utf8_bytes_names_file_and_offset(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    head = b'{"data": [{"questionId": 1, "question": "caf'
    (d / "train_v1.0.json").write_bytes(head + b'\xe9?", "image": "x.png", "docId": 1}]}')
    with pytest.raises(ValueError) as e:
        core.get("docvqa_json", path=str(tmp_path), split="train")
    msg = str(e.value)
    assert str(d / "train_v1.0.json") in msg and f"byte offset {len(head)}" in msg, msg
    assert "line 1" in msg and "UTF-8" in msg, msg


# ---------------------------------------------------------------------------------------------
# prepare_data.
# ---------------------------------------------------------------------------------------------
def test_prepare_data_writing_nothing_exits_nonzero_with_the_reasons(tmp_path, capsys):
    # Every record is skipped: corrupt page, no answers, empty question.
    path = _write_parquet(tmp_path / "train-0.parquet", RECORDS[2:])
    out = tmp_path / "cache"
    argv = ["--source", "hf-parquet", "--input", path, "--split", "train", "--out", str(out)]
    assert prepare_data.main(argv) == 2
    err = capsys.readouterr().err
    assert "wrote 0 examples" in err and "read 3 records, skipped 3" in err, err
    assert "undecodable_image: 1 (first: questionId=12)" in err, err
    assert "no_answers: 1 (first: questionId=13)" in err, err
    assert "empty_question: 1 (first: questionId=14)" in err, err
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_prepare_data_without_a_match_says_what_filtered(tiny_hf, tmp_path, capsys):
    argv = ["--source", "hf-parquet", "--input", tiny_hf, "--split", "train",
            "--out", str(tmp_path / "c"), "--question_types", "handwritten"]  # fmt: skip
    assert prepare_data.main(argv) == 2
    err = capsys.readouterr().err
    assert "wrote 0 examples" in err and "question_types ['handwritten']" in err, err


@pytest.mark.parametrize("res", ["500", "0", "-14"])
def test_prepare_data_refuses_a_resolution_the_model_cannot_take(tiny_hf, tmp_path, capsys, res):
    argv = ["--source", "hf-parquet", "--input", tiny_hf, "--split", "train",
            "--out", str(tmp_path / "c"), "--res", res]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        prepare_data.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    rule = ("the image side must be a positive multiple of the patch size 14 (PaliGemma "
            "checkpoints are released at 224, 448, 896)")
    assert f"argument --res: {res}: {rule}" in err and "Traceback" not in err, err
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="res=500: the image side must be a positive multiple"):
        prepare_data.prepare("hf-parquet", tiny_hf, "train", str(tmp_path / "c"), res=500)


# ---------------------------------------------------------------------------------------------
# Training straight from a raw source reports what it skipped.
# ---------------------------------------------------------------------------------------------
def test_training_iterator_over_a_raw_source_reports_its_skips(tiny_hf, capsys):
    from pg_jax.data import input_pipeline

    src = core.get("docvqa_hf", path=tiny_hf, split="train")
    it = input_pipeline.make_iterator(
        src, lambda ex: {"question_id": ex["question_id"]}, batch_size=1, seed=0, shuffle_buffer=0
    )
    start = capsys.readouterr().out
    assert "read 5 records, kept 3, skipped 2" in start, start
    assert "empty_question: 1 (first: questionId=14)" in start, start
    assert "no_answers: 1 (first: questionId=13)" in start, start
    # Two epochs (two readable questions each): the corrupt page is reported once, after the first.
    ids = [int(next(it)["question_id"][0]) for _ in range(4)]
    assert ids == [10, 11, 10, 11]
    later = capsys.readouterr().out
    assert later.count("undecodable_image: 1 (first: questionId=12)") == 1, later
    assert "first pass" in later and "kept 2, skipped 3" in later, later
    assert src.skips.counts["undecodable_image"] == 1  # counted once, not once per epoch


# ---------------------------------------------------------------------------------------------
# Damaged checkpoint files.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_params():
    return tiny_model.make("tiny_pg1", res=28, vocab_size=Tokenizer().vocab_size)


@pytest.fixture
def npz(tiny_params, tmp_path):
    path = str(tmp_path / "params.npz")
    exporter.save_npz(tiny_params[1], path)
    return path


@pytest.fixture
def hf_dir(tiny_params, tmp_path):
    model, params = tiny_params
    path = str(tmp_path / "hf")
    exporter.save_hf({"img": dict(model.img), "llm": dict(model.llm)}, params, path)
    return path


def _member_offset(path, member):
    """Byte offset of a zip member's data (after its local header)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _flip_bytes(path, offset, n=16):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def test_npz_with_a_corrupt_member_names_file_and_key(npz):
    key = "llm/embedder/input_embedding"
    _flip_bytes(npz, _member_offset(npz, f"params/{key}.npy") + 200)  # Array data, not header.
    with pytest.raises(CheckpointError) as e:
        pg_jax.load(npz)
    msg = str(e.value)
    assert npz in msg and repr(key) in msg and "CRC" in msg, msg


@pytest.mark.parametrize("offset, error", [(0, "Error -3 while decompressing"), (300, "CRC")])
def test_compressed_npz_with_a_corrupt_member_names_file_and_key(
    tiny_params, tmp_path, offset, error
):
    flat = flax.traverse_util.flatten_dict(tiny_params[1], sep="/")
    flat = {"params/" + k: np.asarray(v) for k, v in flat.items()}
    path = str(tmp_path / "compressed.npz")
    np.savez_compressed(path, **flat)
    key = "llm/embedder/input_embedding"
    _flip_bytes(path, _member_offset(path, f"params/{key}.npy") + offset, 4)
    with pytest.raises(CheckpointError) as e:
        pg_jax.load(path)
    msg = str(e.value)
    assert path in msg and key in msg and error in msg, msg


def test_truncated_npz_names_the_file(npz):
    size = os.path.getsize(npz)
    with open(npz, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match=re.escape(npz) + ".*not a readable .npz"):
        pg_jax.load(npz)


def test_truncated_safetensors_names_the_file(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) - 1000)
    with pytest.raises(CheckpointError) as e:
        pg_jax.load(hf_dir)
    msg = str(e.value)
    assert st in msg and "not a readable safetensors file" in msg, msg
    assert "the file holds" in msg, msg  # Says by how much it falls short.


def test_safetensors_with_bad_offsets_names_file_and_tensor(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = sorted(k for k in header if k != "__metadata__")[0]
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 8]  # Longer than shape x dtype says.
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(st, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data[8 + n :])
    with pytest.raises(CheckpointError) as e:
        pg_jax.load(hf_dir)
    msg = str(e.value)
    assert st in msg and f"tensor {name!r}" in msg and "data_offsets" in msg, msg


def test_malformed_hf_config_json_names_the_file(hf_dir):
    config = os.path.join(hf_dir, "config.json")
    with open(config, "a") as f:
        f.write("}")
    with pytest.raises(CheckpointError) as e:
        pg_jax.load(hf_dir)
    msg = str(e.value)
    assert config in msg and "not valid JSON" in msg and "line" in msg, msg


def test_predict_and_export_print_the_checkpoint_error_and_exit_2(npz, tmp_path, capsys):
    _flip_bytes(npz, _member_offset(npz, "params/llm/embedder/input_embedding.npy") + 200)
    page = tmp_path / "page.png"
    page.write_bytes(PAGES["a_1.png"])
    argv = ["--ckpt", npz, "--image", str(page), "--question", "What is the total?"]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and npz in err and "Traceback" not in err, err

    with pytest.raises(SystemExit) as e:
        export.main(["--ckpt", npz, "--out", str(tmp_path / "out"), "--format", "npz"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and npz in err and "input_embedding" in err, err


def test_safetensors_tensor_of_a_dtype_numpy_lacks_names_file_tensor_and_dtype(tmp_path):
    from pg_jax.models.safetensors_io import SafetensorsFile

    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})
    blob = header.encode() + b" " * (-len(header) % 8)
    path = tmp_path / "f8.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(4))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: cannot read tensor 'w' of dtype "
                                                        "F8_E4M3")):  # fmt: skip
        SafetensorsFile(str(path)).get("w")
