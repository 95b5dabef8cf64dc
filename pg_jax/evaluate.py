"""Evaluate a PaliGemma checkpoint on DocVQA: ANLS, a predictions JSON and an HTML report.

With a training config (its ``evals`` entries of type "vqa" are run)::

    python -m pg_jax.evaluate --config configs/docvqa.py --workdir /tmp/pg_demo
    python -m pg_jax.evaluate --config configs/docvqa.py:res=448,data=/data/docvqa \\
        --workdir /tmp/run --ckpt /ckpt/finetuned.npz --split test

With flags alone (no config; default data: the embedded synthetic set)::

    python -m pg_jax.evaluate --workdir /tmp/eval --ckpt /tmp/pg_demo/params.npz --limit 200

The checkpoint is ``--ckpt`` (a big_vision .npz or an HF directory) or, by default, the merged
params the trainer writes at the end of training, ``{workdir}/params.npz``. Outputs, in the
workdir: ``{prefix}.json`` (one record per question; for a split without answers the DocVQA
evaluation server's ``[{"questionId", "answer"}]``), ``{prefix}.html`` (the report, worst
answers first) and ``{prefix}_metrics.json``, where prefix is e.g. ``docvqa_val``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from pg_jax import config_cli
from pg_jax.evaluators import common


# ---------------------------------------------------------------------------------------------
# Where the data, the config and the checkpoint come from.
# ---------------------------------------------------------------------------------------------
def data_spec(path: str | None, split: str, limit: int | None = None) -> dict:
    """A ``pg_jax.data.core.get`` spec for a directory (``core.resolve`` picks the reader).

    Args:
      path: a prepare_data cache (manifest.json), an HF parquet directory, the original DocVQA
        JSON release, or a synthetic set's root (holding ``docvqa/``). None: the embedded
        synthetic set (generated on first use).
      split: "train", "val" or "test" (ignored by prepared caches, which hold one split).
      limit: the first ``limit`` questions only.

    Returns:
      {"name": "docvqa", "path": ..., "split": ..., "limit": ...}.
    """
    if path is None:
        from pg_jax.data import synthetic

        path = synthetic.ensure_synthetic()
    return {"name": "docvqa", "path": path, "split": split, "limit": limit}


def default_config_path() -> str:
    """configs/docvqa.py of this checkout: where the flags-only mode takes its preprocessing."""
    import pg_jax

    root = os.path.dirname(os.path.dirname(os.path.abspath(pg_jax.__file__)))
    path = os.path.join(root, "configs", "docvqa.py")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found (pg_jax is not run from its repository); pass "
                         "--config path/to/configs/docvqa.py[:key=value,...]")
    return path


def config_spec(a: argparse.Namespace, res: int | None) -> str:
    """The config to read: --config, or configs/docvqa.py at the checkpoint's res; the prompt
    flags (--text_len, --prompt, --tokenizer) become its arguments, so its pp strings use them."""
    spec = a.config or f"{default_config_path()}:res={res},text_len={a.text_len or 48}"
    extra = {"text_len": a.text_len if a.config else None, "prompt": a.prompt,
             "tokenizer": a.tokenizer}
    args = [f"{k}={v}" for k, v in extra.items() if v]
    if args:
        spec += ("," if ".py:" in spec else ":") + ",".join(args)
    return spec


def evals_from_config(config, split: str | None, limit: int | None) -> dict[str, dict]:
    """The config's vqa evals (optionally only those of ``split``), data placeholders resolved."""
    chosen = {}
    evals = config.evals.to_dict() if hasattr(config.evals, "to_dict") else dict(config.evals)
    for prefix, entry in evals.items():
        entry = dict(entry)
        if entry.get("type") != "vqa":
            continue
        from pg_jax.data import core

        data = dict(entry["data"])
        if split:
            if data.get("path") not in (None, "synthetic") and \
                    core.resolve(data)["name"] == "docvqa_prepared":
                continue  # A prepared cache is one fixed split; its prefix says which.
            data["split"] = split
            prefix = f"{prefix.rsplit('/', 1)[0]}/{split}"
        # The trainer's placeholder for the embedded set (in data and the baseline's data).
        from pg_jax.data import synthetic

        difficulty = config.synthetic if "synthetic" in config else "easy"
        data = synthetic.resolve_placeholder(data, difficulty)
        if "baseline_data" in entry:
            entry["baseline_data"] = synthetic.resolve_placeholder(entry["baseline_data"],
                                                                   difficulty)
        if limit:
            data["limit"] = limit
        entry["data"] = data
        chosen[prefix] = entry
    if not chosen:
        raise ValueError(
            f"the config has no evals of type 'vqa'{f' for split {split}' * bool(split)}"
        )
    return chosen


def check_writable(workdir: str) -> None:
    """Creates `workdir` and writes a probe file in it; a clear error if either fails."""
    import tempfile

    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_check"):
            pass
    except OSError as e:
        raise ValueError(
            f"cannot write the outputs to --workdir {workdir} ({e.strerror or e}); pass a "
            "writable directory (the checkpoint may stay where it is: --ckpt PATH)"
        ) from None


def resolve_ckpt(ckpt: str | None, workdir: str) -> str:
    """``--ckpt``, else the trainer's ``{workdir}/params.npz``; a clear error if neither exists."""
    path = ckpt or os.path.join(workdir, "params.npz")
    if not os.path.exists(path):
        if ckpt:
            raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
        raise FileNotFoundError(
            f"no checkpoint given and {path} does not exist (the trainer writes it at the end "
            "of training); pass --ckpt PATH (a big_vision .npz or a Hugging Face directory)"
        )
    return path


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pg_jax.evaluate",
        description="Evaluate a PaliGemma checkpoint on DocVQA: prints ANLS, writes the "
        "predictions JSON and an HTML report (worst answers first) into --workdir.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", required=True, help="where outputs go; holds params.npz by default")
    p.add_argument(
        "--config",
        help="training config, path/to/config.py[:key=value,...]; "
        "its evals of type 'vqa' are run (default: build one from the flags below)",
    )
    p.add_argument("--ckpt", help="big_vision .npz or HF directory (default: WORKDIR/params.npz)")
    p.add_argument(
        "--split",
        default=None,
        help="train | val | test (default: val, or the "
        "config's); a split without answers gives the test-server JSON",
    )
    p.add_argument(
        "--data",
        help="dataset directory: prepare_data cache, HF parquet dir, DocVQA "
        "JSON release or synthetic root (default: the embedded synthetic set)",
    )
    p.add_argument(
        "--tokenizer",
        help="SentencePiece .model the checkpoint was trained with "
        "(default: the config's, else the small project tokenizer)",
    )
    p.add_argument("--res", type=int, help="image side; must be the checkpoint's (default)")
    p.add_argument("--limit", type=int, help="evaluate the first N questions only")
    p.add_argument("--batch_size", type=int, help="questions per decode batch (default 16)")
    p.add_argument("--max_decode_len", type=int, help="answer tokens at most (default 32)")
    p.add_argument("--text_len", type=int, help="prompt tokens (default 48)")
    p.add_argument("--prompt", help='prompt template (default "{question}")')
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="compute dtype (auto: bfloat16, float16 on GPUs without it, float32 on CPU)",
    )
    p.add_argument("--report_rows", type=int, default=500, help="questions listed in the report")
    p.add_argument("--no_report", action="store_true", help="skip the HTML report")
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (2 with a message on bad arguments)."""
    a = _parser().parse_args(argv)
    try:
        check_writable(a.workdir)  # before decoding anything: the outputs must be writable
        ckpt = resolve_ckpt(a.ckpt, a.workdir)
        if a.config:  # config errors before the weights are loaded
            config = config_cli.load_config(config_spec(a, None))
            evals = evals_from_config(config, a.split, a.limit)

        import jax
        import jax.numpy as jnp

        from pg_jax import devices, sharding
        from pg_jax.models import loader

        # A full copy of the weights on every device; the evaluator splits each batch's rows
        # over them (pg_jax.predict_fns.place_batch), so all devices decode, each its share.
        mesh = sharding.make_mesh([("data", -1)])
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        print(f"loading {ckpt} onto {jax.device_count()} device(s)")
        dtype = devices.compute_dtype(a.dtype, jax.devices()[0]).value
        model, params = loader.load(
            ckpt, dtype=dtype, param_dtype=jnp.dtype(dtype), shardings=replicated
        )
        res = model.img["image_size"]
        if a.res and a.res != res:
            raise ValueError(f"--res {a.res}: checkpoint {ckpt} is at {res} px")
        if a.config and config.input.res != res:
            raise ValueError(f"config eval at res {config.input.res}; checkpoint is at {res} px")
        if not a.config:  # the preprocessing of configs/docvqa.py's vqa eval, at this res
            config = config_cli.load_config(config_spec(a, res))
            split = a.split or "val"
            evals = {f"docvqa/{split}": {"type": "vqa", "data": data_spec(a.data, split, a.limit),
                                         "pp_fn": config.evals["docvqa/val"]["pp_fn"]}}
        tokenizer = a.tokenizer or (config.tokenizer if "tokenizer" in config else None) or None
        # Flags override the config's entries; unset flags keep the config's or the defaults.
        flags = {k: getattr(a, k) for k in ("batch_size", "max_decode_len")}
        for entry in evals.values():
            entry.update({k: v for k, v in flags.items() if v is not None})
            entry.update(report=not a.no_report, report_rows=a.report_rows, progress=True)
        built = common.from_config(evals, model=model, tokenizer=tokenizer, workdir=a.workdir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    for prefix, (evaluator, _) in built.items():
        t0 = time.time()
        metrics = dict(evaluator.run(params))
        print(f"\n{prefix}  ({ckpt}, {time.time() - t0:.1f}s)")  # the numbers first, then files
        for name, value in metrics.items():
            print(f"  {name[len(prefix) + 1 :]:<24} {value:.4f}" if isinstance(value, float)
                  else f"  {name[len(prefix) + 1 :]:<24} {value}")  # fmt: skip
        stem = common.metric_file_stem(prefix)
        metrics_path = os.path.join(a.workdir, f"{stem}_metrics.json")
        with open(metrics_path, "w") as f:
            json.dump({"ckpt": os.path.abspath(ckpt), **metrics}, f, indent=1)
        for kind, path in {**evaluator.outputs, "metrics": metrics_path}.items():
            print(f"  {kind:<24} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
