"""Prepares a DocVQA subset once into a compact TFRecord cache that later runs load in seconds.

  python -m pg_jax.prepare_data --source hf-parquet --input /data/DocumentVQA --split train \
      --limit 2000 --res 448 --out /tmp/docvqa_train_448

Each page is decoded and resized to res x res ONCE (questions of a page share the work; ~3.9 per
page in DocVQA), then every question is written with its page as PNG (default) or raw uint8
(`--image_format raw`, faster to read back, larger on disk: see BENCHMARKS.md). The cache holds
`data-NNNNN.tfrecord` shards and `manifest.json` (counts, skip reasons with the first few ids,
options). Running again with the same options reuses the cache; with other options it refuses
(naming the differences) unless `--overwrite` is given, so two subsets never mix in one directory.
From Python: `pg_jax.data.cache_writer.prepare(...)` returns the manifest; read the cache with
`pg_jax.data.core.get("docvqa_prepared", path=out)`.
"""

from __future__ import annotations

import argparse
import sys

from pg_jax.data.cache_writer import (  # noqa: F401 - prepare and the errors are the CLI's API too
    RES_RULE,
    SOURCES,
    CacheMismatchError,
    NothingToWriteError,
    check_res,
    prepare,
)


def _res_arg(value: str) -> int:
    # An ArgumentTypeError is printed by argparse with the usage line; the exit status is 2.
    try:
        res = int(value)
        check_res(res)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value}: {RES_RULE}") from None
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pg_jax.prepare_data",
        description="Prepare a DocVQA subset once into a TFRecord cache (see module docstring).",
    )
    p.add_argument(
        "--source",
        required=True,
        choices=sorted(SOURCES),
        help="hf-parquet: HuggingFaceM4/DocumentVQA shards; docvqa-json: original release",
    )
    p.add_argument("--input", required=True, help="data directory (or one .parquet / .json file)")
    p.add_argument("--split", required=True, help="train, validation (val) or test")
    p.add_argument("--out", required=True, help="cache directory to write")
    p.add_argument("--limit", type=int, default=None, help="keep at most N questions")
    p.add_argument("--fraction", type=float, default=None, help="keep this fraction (0, 1]")
    p.add_argument(
        "--sample_seed",
        type=int,
        default=None,
        help="seeded random subset (default: the first ones in file order)",
    )
    p.add_argument(
        "--question_types",
        default=None,
        help="comma-separated question types to keep, e.g. 'form,table/list'",
    )
    p.add_argument("--res", type=_res_arg, default=224,
                   help="square side, a multiple of the patch size 14: 224, 448 or 896 for the "
                   "released checkpoints")  # fmt: skip
    p.add_argument("--image_format", default="png", choices=["png", "raw"])
    p.add_argument("--examples_per_shard", type=int, default=1024)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing cache that was made with other options",
    )
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    qt = [t.strip() for t in a.question_types.split(",")] if a.question_types else None
    try:
        prepare(
            a.source,
            a.input,
            a.split,
            a.out,
            limit=a.limit,
            fraction=a.fraction,
            sample_seed=a.sample_seed,
            question_types=qt,
            res=a.res,
            image_format=a.image_format,
            examples_per_shard=a.examples_per_shard,
            overwrite=a.overwrite,
            workers=a.workers,
        )
    except (CacheMismatchError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
