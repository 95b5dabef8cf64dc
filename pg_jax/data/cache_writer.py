"""Writes a prepared DocVQA cache: each page decoded and resized once, then TFRecord shards.

`prepare(...)` is the library function behind ``python -m pg_jax.prepare_data`` and the trainer's
``config.input.cache_dir``; `pg_jax.data.prepared` reads what it writes. Each page is decoded and
resized to res x res ONCE (questions of a page share the work; ~3.9 per page in DocVQA), then every
question is written with its page as PNG (default) or raw uint8 (``image_format="raw"``, faster to
read back, larger on disk: see BENCHMARKS.md). The cache holds ``data-NNNNN.tfrecord`` shards and
``manifest.json`` (counts, skip reasons with the first few ids, options). Preparing again with the
same options reuses the cache; with other options it refuses (naming the differences) unless
``overwrite=True``, so two subsets never mix in one directory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import json
import os
import shutil
import time
from collections.abc import Sequence

from PIL import Image

from pg_jax.data import core
from pg_jax.data.docvqa import Example
from pg_jax.models import variants

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SOURCES = {"hf-parquet": "docvqa_hf", "docvqa-json": "docvqa_json"}


class CacheMismatchError(RuntimeError):
    """An existing cache was made with other options."""


class NothingToWriteError(ValueError):
    """Every record was skipped or filtered out: no cache is written."""


def check_res(res: int) -> None:
    """Refuses a resolution the image tower cannot take: it must be a multiple of its patch."""
    if res <= 0 or res % variants.SO400M["patch_size"]:
        raise ValueError(f"res={res}: {RES_RULE}")


RES_RULE = (
    f"the image side must be a positive multiple of the patch size "
    f"{variants.SO400M['patch_size']} (PaliGemma checkpoints are released at "
    f"{', '.join(map(str, variants.RESOLUTIONS))})"
)


def resize_page(data: bytes, res: int, image_format: str) -> bytes:
    """Decodes a page, converts it to RGB, resizes to res x res, and re-encodes it.

    PIL's bilinear filter widens its support when downscaling, i.e. it is antialiased like
    `tf.image.resize(..., antialias=True)` (equal up to rounding).

    Args:
      data: encoded image bytes.
      res: target side.
      image_format: "png" (compress level 1: the fastest to write, read speed is the same) or
        "raw" (uint8 row-major res x res x 3).

    Returns:
      The encoded page.
    """
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB").resize((res, res), Image.BILINEAR)
    if image_format == "raw":
        return im.tobytes()
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _fingerprint(source) -> list:
    # Names and sizes of the input files: a regenerated or replaced input invalidates the cache.
    files = getattr(source, "files", None) or [source.json_path]
    return [[os.path.abspath(f), os.path.getsize(f)] for f in files]


def _serialize(ex: Example, image: bytes) -> bytes:
    import tensorflow as tf

    def b(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    def i(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    feats = {
        "question_id": i([ex.question_id]),
        "question": b([ex.question.encode()]),
        "answers": b([a.encode() for a in ex.answers]),
        "question_types": b([t.encode() for t in ex.question_types]),
        "doc_id": i([ex.doc_id]),
        "image": b([image]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
    )


def prepare(
    source: str,
    input: str,
    split: str,
    out: str,
    *,
    limit: int | None = None,  # noqa: A002
    fraction: float | None = None,
    sample_seed: int | None = None,
    question_types: Sequence[str] | None = None,
    res: int = 224,
    image_format: str = "png",
    examples_per_shard: int = 1024,
    overwrite: bool = False,
    workers: int | None = None,
    verbose: bool = True,
) -> dict:
    """Builds (or reuses) the cache of one selected split.

    Args:
      source: "hf-parquet" or "docvqa-json".
      input: the data location (see `pg_jax.data.docvqa`).
      split: split name ("train", "validation"/"val", "test").
      out: cache directory.
      limit, fraction, sample_seed, question_types: selection, see `pg_jax.data.docvqa`.
      res: target square resolution: a multiple of the patch size 14 (224, 448, 896 for the
        released PaliGemma checkpoints).
      image_format: "png" or "raw".
      examples_per_shard: questions per TFRecord file (multi-host reads whole files).
      overwrite: replace an existing cache made with other options.
      workers: threads decoding and resizing pages (default: CPU count).
      verbose: print counts and a progress bar.

    Returns:
      The manifest dict (also in `{out}/manifest.json`).

    Raises:
      CacheMismatchError: `out` holds a cache with other options (or something else) and
        `overwrite` is False.
      NothingToWriteError: no example was kept (the message gives the skip reasons).
    """
    check_res(res)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    if image_format not in ("png", "raw"):
        raise ValueError(f"image_format must be 'png' or 'raw', got {image_format!r}")
    say = print if verbose else (lambda *a, **k: None)
    options = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "input": os.path.abspath(input),
        "split": split,
        "limit": limit,
        "fraction": fraction,
        "sample_seed": sample_seed,
        "question_types": sorted(question_types) if question_types else None,
        "res": res,
        "image_format": image_format,
        "examples_per_shard": examples_per_shard,
    }
    t0 = time.time()
    reader = core.get(
        SOURCES[source],
        path=input,
        split=split,
        limit=limit,
        fraction=fraction,
        sample_seed=sample_seed,
        question_types=question_types,
    )
    options["input_files"] = _fingerprint(reader)

    manifest_path = os.path.join(out, MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
        if old.get("options") == options:
            say(f"Reusing cache {out}: {old['counts']['kept']} examples, same options.")
            return old
        if not overwrite:
            raise CacheMismatchError(
                f"{out} holds a cache made with other options ({_diff(old['options'], options)}). "
                "Refusing to mix them: pass --overwrite (overwrite=True) to rebuild it, or "
                "choose another --out."
            )
        say(f"Overwriting cache {out} (options differ: {_diff(old['options'], options)}).")
    elif os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise CacheMismatchError(
            f"{out} exists, is not empty and holds no {MANIFEST}: refusing "
            "to write into it. Pass --overwrite or choose another --out."
        )

    # Write next to the target and rename at the end: an interrupted run leaves no manifest.
    tmp = out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    counts = _write_shards(reader, tmp, res, image_format, examples_per_shard, workers, verbose)
    if counts["kept"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise NothingToWriteError(_nothing_kept(reader, out, options))
    manifest = {
        "options": options,
        "counts": {
            "read": reader.num_read,
            "selected": reader.num_examples,
            "kept": counts["kept"],
            "skipped": reader.skips.total,
            "pages_decoded": counts["pages"],
        },
        "skipped": reader.skips.as_dict(),
        "shards": counts["shards"],
        "seconds": round(time.time() - t0, 2),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    c = manifest["counts"]
    say(
        f"read {c['read']}, kept {c['kept']}, skipped {c['skipped']}"
        + reader.skips.describe()
        + f"\npages decoded {c['pages_decoded']}; wrote {out} in {manifest['seconds']} s"
    )
    return manifest


def _nothing_kept(reader, out: str, options: dict) -> str:
    unselected = reader.num_read - reader.num_examples - sum(
        reader.skips.counts[r] for r in ("empty_question", "no_answers")
    )
    selection = ", ".join(
        f"{k} {options[k]}" for k in ("limit", "fraction", "sample_seed", "question_types")
        if options[k] is not None
    )
    return (
        f"wrote 0 examples to {out} (nothing written): read {reader.num_read} records, skipped "
        f"{reader.skips.total}" + reader.skips.describe()
        + (f"\n  not selected ({selection}): {unselected}" if unselected else "")
    )


def _write_shards(
    reader,
    out: str,
    res: int,
    image_format: str,
    per_shard: int,
    workers: int | None,
    verbose: bool,
) -> dict:
    """Decodes each page once (threads), writes questions to shards; returns counts."""
    import tensorflow as tf
    from tqdm import tqdm

    shards, kept, pages = [], 0, 0
    writer, n_in_shard = None, 0
    # Pages already resized, by page key; questions of a page are adjacent in JSON order and
    # usually close in parquet order, so a small LRU catches them without holding the split.
    done: collections.OrderedDict[str, bytes | None] = collections.OrderedDict()
    bar = tqdm(total=reader.num_examples, unit="q", disable=not verbose, smoothing=0.1)
    pool = concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1)

    def emit(ex: Example, image: bytes) -> None:
        nonlocal writer, n_in_shard, kept
        if writer is None or n_in_shard == per_shard:
            if writer:
                writer.close()
            shards.append({"file": f"data-{len(shards):05d}.tfrecord", "examples": 0})
            writer = tf.io.TFRecordWriter(os.path.join(out, shards[-1]["file"]))
            n_in_shard = 0
        writer.write(_serialize(ex, image))
        shards[-1]["examples"] += 1
        n_in_shard += 1
        kept += 1

    def flush(chunk: list[Example]) -> None:
        nonlocal pages
        new = {}
        for ex in chunk:
            if ex.image_key not in done and ex.image_key not in new:
                new[ex.image_key] = pool.submit(_safe_resize, ex.image, res, image_format)
        for key, fut in new.items():
            done[key] = fut.result()
            pages += done[key] is not None
        for ex in chunk:
            image = done[ex.image_key]
            done.move_to_end(ex.image_key)
            if image is None:
                reader.skips.add("undecodable_image", f"questionId={ex.question_id}")
            else:
                emit(ex, image)
            bar.update(1)
        while len(done) > 256:
            done.popitem(last=False)

    chunk: list[Example] = []
    for ex in reader.iter_examples():
        # Keep a copy: the reader releases the page bytes once we move on.
        chunk.append(Example(**{**ex.__dict__}))
        if len(chunk) == 64:
            flush(chunk)
            chunk = []
    flush(chunk)
    bar.close()
    pool.shutdown()
    if writer:
        writer.close()
    return {"kept": kept, "pages": pages, "shards": shards}


def _safe_resize(data: bytes, res: int, image_format: str) -> bytes | None:
    try:
        return resize_page(data, res, image_format)
    except Exception:  # noqa: BLE001 - any decode failure means: skip this page, count it.
        return None
