"""Synthetic DocVQA: rendered document pages with questions whose answers are read off the page.

The embedded default data set of pg_jax. It is written in BOTH on-disk formats real DocVQA comes in,
so the real readers (`pg_jax.data.docvqa`) are what reads it:

  {out}/docvqa/{train,val,test}/{split}_v1.0.json, {split}_v1.0_withQT.json, documents/*.png
  {out}/hf/data/{train,validation,test}-0000i-of-0000n.parquet   (HuggingFaceM4/DocumentVQA columns)

Every answer is a value printed on its page and drawn at random per page, so the same question
("What is the total?") has different answers on different pages: a model that ignores the image
scores near zero. `difficulty="easy"` (default) is shaped for a tiny ViT at 224 px to learn in a
few CPU minutes: a 448x448 page, large print, a title and three fields, answers of 1-3 digits or
a letter+digits code, one or two phrasings per question. `difficulty="hard"` looks more like real
documents: portrait pages, small print, more fields, distractor text, money with cents and
thousands separators, dates, names, several accepted spellings.

Usage:
  python -m pg_jax.data.synthetic --out /tmp/synth [--seed 0] [--num_pages 1000] \
      [--format docvqa-json|hf-parquet|both] [--difficulty easy|hard]
In code, `ensure_synthetic()` generates the default set into the cache dir on first use.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import multiprocessing
import os
import random
import shutil
import time

import tqdm
from PIL import Image, ImageDraw, ImageFont

# Splits in the HF naming; the original release calls the validation folder "val".
SPLITS = ("train", "validation", "test")
JSON_SPLIT_DIR = {"train": "train", "validation": "val", "test": "test"}
_DONE = "DONE.json"  # Written last: a directory without it is an interrupted generation.

_ITEMS = ("pens", "paper", "boxes", "tape", "ink", "files", "chairs", "lamps")
_NAMES = ("Smith", "Brown", "Lee", "Garcia", "Miller", "Davis", "Clark", "Lewis", "Young", "King")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_FILLER = (
    "please find enclosed the documents requested in your letter of last week and note "
    "that the committee will review the results at its next meeting before any further "
    "action is taken on the proposal submitted by the research department"
).split()


@dataclasses.dataclass
class QA:
    question: str
    answers: list[str]
    question_types: list[str]


@dataclasses.dataclass
class PageSpec:
    """What a page shows (lines of text) and the questions asked about it."""

    doc_type: str
    title: str
    lines: list[str]
    qas: list[QA]
    table: list[tuple[str, str]] | None = None


# ---------------------------------------------------------------------------------------------
# Values. Easy values use a small character set (digits, capitals, "$") so a tiny model can
# learn to read them; hard values look like real documents and have several spellings.
# ---------------------------------------------------------------------------------------------


def _number(rng: random.Random) -> list[str]:
    return [str(rng.randint(1, 999))]


def _code(rng: random.Random) -> list[str]:
    return [rng.choice("ABCDEFGHKMNPRSTX") + str(rng.randint(10, 99))]


def _money_easy(rng: random.Random) -> list[str]:
    v = rng.randint(1, 999)
    return [f"${v}", str(v)]


def _money_hard(rng: random.Random) -> list[str]:
    cents = rng.randint(0, 99)
    whole = rng.randint(1, 99999)
    return [f"${whole:,}.{cents:02d}", f"{whole}.{cents:02d}", f"{whole:,}.{cents:02d}"]


def _date_hard(rng: random.Random) -> list[str]:
    y, m, d = rng.randint(1960, 1999), rng.randint(1, 12), rng.randint(1, 28)
    return [f"{_MONTHS[m - 1]} {d}, {y}", f"{m}/{d}/{y}", f"{m:02d}/{d:02d}/{y}"]


def _name_hard(rng: random.Random) -> list[str]:
    first = rng.choice("ABCDEFGHJKLMPRSTW")
    last = rng.choice(_NAMES)
    return [f"{first}. {last}", last]


def _code_hard(rng: random.Random) -> list[str]:
    return [
        "".join(rng.choice("ABCDEFGHKMNPRSTX") for _ in range(2)) + f"-{rng.randint(1000, 99999)}"
    ]


# Per document type: (label printed on the page, question phrasings, easy value, hard value, type).
_FIELDS = {
    "invoice": [
        (
            "Invoice No",
            ["What is the invoice number?", "What is the invoice no?"],
            _code,
            _code_hard,
            "form",
        ),
        (
            "Total",
            ["What is the total?", "What is the total amount?"],
            _money_easy,
            _money_hard,
            "form",
        ),
        ("Qty", ["What is the quantity?"], _number, _number, "form"),
        ("Tax", ["What is the tax?"], _money_easy, _money_hard, "form"),
        ("Date", ["What is the date?"], _number, _date_hard, "form"),
    ],
    "form": [
        ("Form", ["What is the form number?"], _code, _code_hard, "form"),
        ("Age", ["What is the age?"], _number, _number, "form"),
        ("Room", ["What is the room number?", "Which room?"], _number, _number, "form"),
        ("Name", ["What is the name?"], _code, _name_hard, "form"),
        ("Date", ["What is the date?"], _number, _date_hard, "form"),
    ],
    "receipt": [
        ("Store", ["What is the store number?"], _number, _number, "layout"),
        (
            "Total",
            ["What is the total?", "What is the total amount?"],
            _money_easy,
            _money_hard,
            "layout",
        ),
        ("Cash", ["How much cash was paid?"], _money_easy, _money_hard, "layout"),
        ("Items", ["How many items?"], _number, _number, "layout"),
    ],
    "letter": [
        (
            "Ref",
            ["What is the reference?", "What is the ref number?"],
            _code,
            _code_hard,
            "free_text",
        ),
        ("Page", ["What is the page number?"], _number, _number, "free_text"),
        ("From", ["Who is the letter from?"], _code, _name_hard, "free_text"),
        ("Date", ["What is the date?"], _number, _date_hard, "free_text"),
    ],
}
_DOC_TYPES = ("invoice", "form", "receipt", "letter", "table")
# "demo": the trainer's embedded default (see _demo_spec); "demo_read": the pretraining task of
# its shipped checkpoint (see _demo_read_spec).
DIFFICULTIES = ("easy", "hard", "demo", "demo_read")


def _page_spec(rng: random.Random, difficulty: str) -> PageSpec:
    """Draws one page's content and its questions."""
    hard = difficulty == "hard"
    if difficulty == "demo":
        return _demo_spec(rng)
    if difficulty == "demo_read":
        return _demo_read_spec(rng)
    doc_type = rng.choice(_DOC_TYPES)
    title = doc_type.upper()
    # Half the pages also ask for the document type: its answer varies by page too.
    qas = (
        [QA("What type of document is this?", [doc_type], ["layout"])] if rng.random() < 0.5 else []
    )
    lines: list[str] = []
    table = None
    if doc_type == "table":
        n_rows = rng.randint(4, 7) if hard else 3
        table, row_qas = [], []
        for item in rng.sample(_ITEMS, n_rows):
            value = _money_hard(rng) if hard else _number(rng)
            table.append((item, value[0]))
            question = f"What is the amount for {item}?" if hard else f"How many {item}?"
            row_qas.append(QA(question, value, ["table/list"]))
        # At most three rows are asked about, as DocVQA pages carry ~3.9 questions each.
        qas += rng.sample(row_qas, 3)
        return PageSpec(doc_type, title, lines, qas, table)
    fields = _FIELDS[doc_type]
    n_fields = rng.randint(4, len(fields)) if hard else 3
    chosen = rng.sample(fields, n_fields)
    for label, phrasings, easy_value, hard_value, qtype in chosen:
        value = (hard_value if hard else easy_value)(rng)
        lines.append(f"{label}: {value[0]}")
        qas.append(QA(rng.choice(phrasings), value, [qtype]))
    if hard:
        # Distractor sentences: real pages are mostly text that no question asks about.
        for _ in range(rng.randint(2, 5)):
            start = rng.randint(0, len(_FILLER) - 8)
            lines.insert(rng.randint(0, len(lines)), " ".join(_FILLER[start : start + 7]))
        qas = rng.sample(qas, min(len(qas), rng.randint(3, 5)))
    return PageSpec(doc_type, title, lines, qas, table)


def _demo_spec(rng: random.Random) -> PageSpec:
    """The trainer's embedded demo: a standard form per document type, two-digit answers.

    Shaped for a tiny ViT at 112 px to learn in a few CPU minutes: each document type always
    shows the same three fields in the same place (like a standardised form), in very large
    type, so answering is reading two digits at a known spot; the values (and the type) vary
    per page, so a model that ignores the image still scores near zero.
    """
    doc_type = rng.choice(_DOC_TYPES[:4])
    qas = [QA("What type of document is this?", [doc_type], ["layout"])]
    lines, field_qas = [], []
    for label, phrasings, _, _, _ in _FIELDS[doc_type][:3]:
        value = str(rng.randint(10, 99))
        lines.append(f"{label}: {value}")
        # Type "form" for every field, "layout" only for the page type: selectable apart.
        field_qas.append(QA(phrasings[0], [value], ["form"]))
    # One field question per page: half the questions need the (coarse) page type, half the
    # (fine) digits, which a tiny model from scratch only starts to read after many more steps.
    qas.append(rng.choice(field_qas))
    return PageSpec(doc_type, doc_type.upper(), lines, qas)


def _demo_read_spec(rng: random.Random) -> PageSpec:
    """The demo checkpoint's pretraining task: reading the demo's pages, OCR-style.

    The same pages as ``_demo_spec`` (same layout, same value distribution), but no DocVQA
    question: "ocr" asks for the title and the three values in reading order ("INVOICE 61 80
    83"; seven tokens to read per page, the signal that gets a tiny model from scratch past the
    plateau where it ignores the image), and one positional question per page, "Title?" or
    "Line 2?" (the value on field line 2). A model trained on it reads pages but has never seen
    "What is the total?": that "total" means the value next to "Total", and that the document
    type is its title, is what the demo's fine-tuning has to teach.
    """
    spec = _demo_spec(rng)
    values = [line.split(": ")[1] for line in spec.lines]
    positional = [QA("Title?", [spec.title], ["layout"])] + [
        QA(f"Line {i}?", [v], ["form"]) for i, v in enumerate(values, 1)
    ]
    qas = [QA("ocr", [" ".join([spec.title, *values])], ["others"]), rng.choice(positional)]
    return dataclasses.replace(spec, qas=qas)


# ---------------------------------------------------------------------------------------------
# Rendering. PIL's embedded default font (FreeType, Pillow >= 10.1) keeps pages identical on
# every machine with the same Pillow, unlike system fonts.
# ---------------------------------------------------------------------------------------------

_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont:
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def _render(spec: PageSpec, rng: random.Random, difficulty: str) -> Image.Image:
    """Draws a page: a title, then one line per field (or a two-column table)."""
    if difficulty in ("demo", "demo_read"):
        return _render_demo(spec)
    hard = difficulty == "hard"
    w, h = (850, 1100) if hard else (448, 448)
    size = rng.randint(18, 26) if hard else 34
    img = Image.new("L" if hard else "RGB", (w, h), 255 if hard else (255, 255, 255))
    draw = ImageDraw.Draw(img)
    x0 = rng.randint(20, 60) if hard else rng.randint(16, 40)
    y = rng.randint(20, 80) if hard else rng.randint(12, 30)
    draw.text((x0, y), spec.title, font=_font(size + 8), fill=0, stroke_width=1, stroke_fill=0)
    y += size + 8 + rng.randint(20, 40 if hard else 28)
    step = size + (rng.randint(8, 30) if hard else rng.randint(22, 36))
    if spec.table is not None:
        draw.text((x0, y), "Item", font=_font(size), fill=0)
        col = x0 + (w - 2 * x0) // 2
        draw.text((col, y), "Amount" if hard else "Qty", font=_font(size), fill=0)
        draw.line((x0, y + size + 6, w - x0, y + size + 6), fill=0, width=2)
        y += step
        for item, value in spec.table:
            draw.text((x0, y), item, font=_font(size), fill=0)
            draw.text((col, y), value, font=_font(size), fill=0)
            y += step
    else:
        for line in spec.lines:
            draw.text((x0, y), line, font=_font(size), fill=0)
            y += step
    if hard:
        # Scanner-like degradation: a small rotation and speckle noise.
        img = img.rotate(rng.uniform(-1.0, 1.0), fillcolor=255, resample=Image.BILINEAR)
        px = img.load()
        for _ in range(400):
            px[rng.randrange(w), rng.randrange(h)] = rng.randint(0, 200)
    return img


# The demo page is seen at 112 px through 14 px patches: one patch is 56 page pixels.
_DEMO_PATCH = 56


def _render_demo(spec: PageSpec) -> Image.Image:
    """A standard form (see _demo_spec): the title, then one row per field, values large.

    Each value is printed so that its two digits fill two patch columns of the 112 px image
    (size 96: ~56 page px per digit) in a fixed patch row, next to its label in normal print;
    a tiny ViT trained from scratch learns to read digits of that size in minutes on a CPU,
    where the same digits at half the size were still at chance after 550 steps.
    """
    img = Image.new("RGB", (448, 448), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((24, 8), spec.title, font=_font(48), fill=0, stroke_width=1, stroke_fill=0)
    for row, line in enumerate(spec.lines):
        label, value = line.split(": ")
        top = (2 * row + 2) * _DEMO_PATCH - 26  # the digits' ink starts ~26 px below `top`
        draw.text((24, top + 30), f"{label}:", font=_font(40), fill=0)
        draw.text((5 * _DEMO_PATCH, top), value, font=_font(96), fill=0)
    return img


def _page_seed(seed: int, split: str, index: int) -> int:
    # Independent of worker count and order: each page is a pure function of (seed, split, index).
    return (seed * 1_000_003 + SPLITS.index(split)) * 10_000_019 + index


def make_page(
    seed: int, split: str, index: int, difficulty: str = "easy"
) -> tuple[bytes, PageSpec]:
    """Renders one page.

    Args:
      seed: data set seed.
      split: one of SPLITS.
      index: page index within the split.
      difficulty: "easy", "hard" or "demo" (the trainer's embedded default, see _demo_spec).

    Returns:
      (PNG bytes, the page spec with its questions and answers).
    """
    rng = random.Random(_page_seed(seed, split, index))
    spec = _page_spec(rng, difficulty)
    img = _render(spec, rng, difficulty)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # Fast; pages are mostly white anyway.
    return buf.getvalue(), spec


def sample_texts(num_pages: int, seed: int = 0) -> list[str]:
    """Question and answer strings of `num_pages` pages of both difficulties (no rendering).

    Used to train the small project tokenizer on text shaped like this data set.
    """
    out = []
    for i in range(num_pages):
        for difficulty in ("easy", "hard"):
            spec = _page_spec(random.Random(_page_seed(seed, "train", i)), difficulty)
            out += [spec.title, *spec.lines]
            for qa in spec.qas:
                out += [qa.question, *qa.answers]
    return out


# ---------------------------------------------------------------------------------------------
# Writing both formats.
# ---------------------------------------------------------------------------------------------


def _split_sizes(num_pages: int) -> dict[str, int]:
    small = max(20, num_pages // 10)
    return {"train": num_pages, "validation": small, "test": small}


def _page_job(args: tuple[int, str, int, str]) -> tuple[bytes, PageSpec]:
    return make_page(*args)


def _records(split: str, pages: list[tuple[bytes, PageSpec]], split_index: int) -> list[dict]:
    """One dict per question in the DocVQA JSON field names; `_png` carries the page bytes."""
    recs = []
    for i, (png, spec) in enumerate(pages):
        doc_id = split_index * 100_000 + i
        ucsf = f"syn{split[:2]}{i:05d}"
        for j, qa in enumerate(spec.qas):
            recs.append(
                {
                    "questionId": doc_id * 10 + j,
                    "question": qa.question,
                    "question_types": qa.question_types,
                    "image": f"documents/{ucsf}_1.png",
                    "docId": doc_id,
                    "ucsf_document_id": ucsf,
                    "ucsf_document_page_no": "1",
                    "answers": [] if split == "test" else qa.answers,
                    "data_split": JSON_SPLIT_DIR[split],
                    "_png": png,
                }
            )
    return recs


def _write_docvqa_json(out: str, split: str, recs: list[dict]) -> None:
    d = os.path.join(out, "docvqa", JSON_SPLIT_DIR[split])
    os.makedirs(os.path.join(d, "documents"), exist_ok=True)
    written = set()
    plain, with_qt = [], []
    for r in recs:
        if r["image"] not in written:
            with open(os.path.join(d, r["image"]), "wb") as f:
                f.write(r["_png"])
            written.add(r["image"])
        rec = {k: v for k, v in r.items() if k != "_png"}
        if split == "test":  # The released test JSON has no answers at all.
            rec.pop("answers")
        with_qt.append(rec)
        plain.append({k: v for k, v in rec.items() if k != "question_types"})
    name = JSON_SPLIT_DIR[split]
    for suffix, data in (("", plain), ("_withQT", with_qt)):
        with open(os.path.join(d, f"{name}_v1.0{suffix}.json"), "w") as f:
            json.dump(
                {
                    "dataset_name": "SP-DocVQA (synthetic)",
                    "dataset_version": "1.0",
                    "dataset_split": name,
                    "data": data,
                },
                f,
            )


def _write_hf_parquet(out: str, split: str, recs: list[dict], rows_per_shard: int = 2000) -> None:
    import pyarrow as pa  # Only the parquet writer needs pyarrow.
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("questionId", pa.int64()),
            ("question", pa.string()),
            ("question_types", pa.list_(pa.string())),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("docId", pa.int64()),
            ("ucsf_document_id", pa.string()),
            ("ucsf_document_page_no", pa.string()),
            ("answers", pa.list_(pa.string())),
        ]
    )
    d = os.path.join(out, "hf", "data")
    os.makedirs(d, exist_ok=True)
    n_shards = max(1, -(-len(recs) // rows_per_shard))
    for s in range(n_shards):
        chunk = recs[s * rows_per_shard : (s + 1) * rows_per_shard]
        table = pa.table(
            {
                "questionId": [r["questionId"] for r in chunk],
                "question": [r["question"] for r in chunk],
                "question_types": [r["question_types"] for r in chunk],
                "image": [
                    {"bytes": r["_png"], "path": os.path.basename(r["image"])} for r in chunk
                ],
                "docId": [r["docId"] for r in chunk],
                "ucsf_document_id": [r["ucsf_document_id"] for r in chunk],
                "ucsf_document_page_no": [r["ucsf_document_page_no"] for r in chunk],
                "answers": [r["answers"] for r in chunk],
            },
            schema=schema,
        )
        # Small row groups let readers stream without holding a whole shard.
        pq.write_table(
            table, os.path.join(d, f"{split}-{s:05d}-of-{n_shards:05d}.parquet"), row_group_size=256
        )


def generate(
    out: str,
    *,
    seed: int = 0,
    num_pages: int = 2000,
    fmt: str = "both",
    difficulty: str = "easy",
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Generates the synthetic set into `out`.

    Args:
      out: output directory (created; existing content of the same layout is overwritten).
      seed: data set seed; the output is a pure function of (seed, num_pages, difficulty).
      num_pages: train pages; validation and test get max(20, num_pages // 10) each.
      fmt: "docvqa-json", "hf-parquet" or "both".
      difficulty: "easy", "hard" or "demo" (the trainer's embedded default, see _demo_spec).
      workers: rendering processes (default: CPU count).
      progress: a progress bar per split (pages rendered).

    Returns:
      A summary dict (also written to `{out}/DONE.json`).
    """
    if fmt not in ("docvqa-json", "hf-parquet", "both"):
        raise ValueError(f"Unknown format {fmt!r}.")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"Unknown difficulty {difficulty!r}.")
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    sizes = _split_sizes(num_pages)
    workers = workers or os.cpu_count() or 1
    summary = {
        "seed": seed,
        "num_pages": num_pages,
        "difficulty": difficulty,
        "format": fmt,
        "splits": {},
    }
    for split_index, split in enumerate(SPLITS):
        jobs = [(seed, split, i, difficulty) for i in range(sizes[split])]
        bar = tqdm.tqdm(total=len(jobs), desc=f"  {split} pages", disable=not progress)
        if workers > 1 and len(jobs) > 50:
            # "spawn": callers such as the trainer have JAX (multithreaded) loaded; fork deadlocks.
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
                pages = []
                for page in ex.map(_page_job, jobs, chunksize=32):
                    pages.append(page)
                    bar.update()
        else:
            pages = []
            for job in jobs:
                pages.append(_page_job(job))
                bar.update()
        bar.close()
        recs = _records(split, pages, split_index)
        if fmt in ("docvqa-json", "both"):
            _write_docvqa_json(out, split, recs)
        if fmt in ("hf-parquet", "both"):
            _write_hf_parquet(out, split, recs)
        summary["splits"][split] = {"pages": len(pages), "questions": len(recs)}
    summary["seconds"] = round(time.time() - t0, 2)
    with open(os.path.join(out, _DONE), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def default_cache_dir() -> str:
    """Where the embedded default set lives: $PG_JAX_CACHE or ~/.cache/pg_jax."""
    root = os.environ.get("PG_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "pg_jax"))
    return os.path.join(root, "synthetic_docvqa")


def ensure_synthetic(
    path: str | None = None, *, seed: int = 0, num_pages: int = 2000, difficulty: str = "easy"
) -> str:
    """Returns the directory of the synthetic set, generating it on first use.

    Args:
      path: parent directory (default `default_cache_dir()`); the set goes in a subdirectory
        named after its options, so different options never mix.
      seed, num_pages, difficulty: as in `generate`.

    Returns:
      The directory holding `docvqa/` and `hf/`.
    """
    root = path or default_cache_dir()
    out = os.path.join(root, f"{difficulty}-seed{seed}-pages{num_pages}")
    if os.path.exists(os.path.join(out, _DONE)):
        return out
    # Generate next to the target and rename, so an interrupted run never looks complete.
    tmp = f"{out}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"Generating the synthetic DocVQA set ({difficulty}, {num_pages} train pages) into "
          f"{out} (first use only; later runs read it from there)", flush=True)
    summary = generate(tmp, seed=seed, num_pages=num_pages, difficulty=difficulty, progress=True)
    print(f"  generated in {summary['seconds']:.0f}s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_pages", type=int, default=2000, help="train pages (val/test: 1/10)")
    p.add_argument("--format", default="both", choices=["docvqa-json", "hf-parquet", "both"])
    p.add_argument("--difficulty", default="easy", choices=list(DIFFICULTIES))
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    summary = generate(
        a.out,
        seed=a.seed,
        num_pages=a.num_pages,
        fmt=a.format,
        difficulty=a.difficulty,
        workers=a.workers,
        progress=True,
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()


PLACEHOLDER = "synthetic"  # a config's data path meaning "the embedded synthetic set"
# The demo checkpoint's pretraining pages are drawn with another seed than the demo's, so that
# the pages the demo holds out (and trains on) are new to the checkpoint.
PLACEHOLDER_SEED = {"demo_read": 1}


def resolve_placeholder(spec: dict, difficulty: str = "easy") -> dict:
    """A data spec with ``path="synthetic"`` replaced by the generated set's JSON release.

    The spec's ``num_pages`` (default 2000 train pages) is the generated set's size.
    """
    spec = dict(spec)
    if spec.get("path") == PLACEHOLDER:
        out = ensure_synthetic(
            difficulty=difficulty,
            seed=PLACEHOLDER_SEED.get(difficulty, 0),
            num_pages=spec.pop("num_pages", 2000),
        )
        spec["path"] = os.path.join(out, "docvqa")
    return spec
