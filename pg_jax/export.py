r"""Export PaliGemma weights for Hugging Face transformers or big_vision, or a LoRA adapter.

  python -m pg_jax.export --ckpt WORKDIR --out OUT_DIR \
      [--format hf|npz|peft] [--tokenizer tokenizer.model] [--dtype bfloat16] \
      [--set final_logits_softcap=0 --set query_pre_attn_norm=rsqrt_head_dim]

``--ckpt`` is a training run's workdir, or one of its files: a big_vision .npz (the run's
``params.npz``, LoRA factors merged in) or a Hugging Face model directory; for ``--format
peft`` a LoRA run's workdir or its ``lora.npz``. ``--set`` takes the same overrides as
``pg_jax.load`` (see ``pg_jax/models/loader.py``).

HF output (``--format hf``, the default): the hub's key layout, which
transformers 4.57 and 5.x load with no missing or unexpected keys; the
vocabulary padded for ``<image>``; config.json with the hub's values (PaliGemma
2: attention soft-cap 50, final soft-cap 30) unless ``--set`` says otherwise;
generation_config.json; safetensors sharded at 5 GB with an index; tokenizer
and preprocessor files when ``--tokenizer`` is given.

npz output (``--format npz``): ``params/``-prefixed keys, bfloat16 stored as
``|V2`` like the released files; ``--out`` is the file path.

PEFT output (``--format peft``): a LoRA run's factors as a PEFT adapter directory
(``adapter_config.json``, ``adapter_model.safetensors``) that
``peft.PeftModel.from_pretrained(base, OUT_DIR)`` puts on the HF export of the base
checkpoint the run started from (``--format hf --ckpt BASE``).
"""

import argparse
import ast
import os
import sys

from pg_jax.models import exporter, loader, peft_io


def parse_set(items: list[str]) -> dict:
    """["k=v", ...] -> {k: python literal of v, or the string}."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pg_jax.export", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True,
                        help="a run's workdir, a big_vision .npz, an HF model directory, or "
                        "(--format peft) a run's lora.npz")
    parser.add_argument("--out", required=True,
                        help="output directory (hf, peft) or .npz path (npz)")
    parser.add_argument("--format", choices=["hf", "npz", "peft"], default="hf")
    parser.add_argument("--tokenizer", help="SentencePiece .model to ship with an HF export")
    parser.add_argument("--dtype", choices=sorted(exporter.DTYPES),
                        help="weights' dtype (default: as loaded)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model override, as pg_jax.load(**overrides); repeatable")
    args = parser.parse_args(argv)

    overrides = parse_set(args.set)
    if args.format == "peft":
        export_adapter(args.ckpt, args.out)
        return
    if os.path.isfile(os.path.join(args.ckpt, "params.npz")):  # a run's workdir
        args.ckpt = os.path.join(args.ckpt, "params.npz")
    print(f"loading {args.ckpt} ...", flush=True)
    try:
        model, params = loader.load(args.ckpt, **overrides)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError; both name the file.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    model_cfg = {"img": dict(model.img), "llm": dict(model.llm)}
    print(f"architecture: img {model_cfg['img']}\n              llm {model_cfg['llm']}")

    if args.format == "npz":
        exporter.save_npz(params, args.out, args.dtype)
        print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**30:.2f} GiB)")
        return
    # PaliGemma 2: the hub's final soft-cap (30) unless the user set one.
    final_cap = overrides.get("final_logits_softcap")
    files = exporter.save_hf(model_cfg, params, args.out, dtype=args.dtype,
                             tokenizer=args.tokenizer, final_logits_softcap=final_cap)
    print(f"wrote {args.out}: config.json, generation_config.json, {', '.join(files)}"
          f"{', tokenizer files' if args.tokenizer else ''}")


def export_adapter(ckpt: str, out: str) -> None:
    """A LoRA run's factors (its workdir or lora.npz) -> a PEFT adapter directory."""
    path = os.path.join(ckpt, "lora.npz") if os.path.isdir(ckpt) else ckpt
    if not os.path.isfile(path):
        print(f"error: {path} does not exist; --format peft takes a LoRA run's workdir or its "
              "lora.npz (runs with freeze=lora write it)", file=sys.stderr)
        sys.exit(2)
    try:
        factors, lora_cfg, model_cfg = peft_io.read_factors(path)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    files = peft_io.save_adapter(factors, lora_cfg, model_cfg, out)
    print(f"wrote {out}: {', '.join(files)} (LoRA rank {lora_cfg['rank']}, alpha "
          f"{lora_cfg['alpha']}, {len(factors) // 2} adapted weights)")


if __name__ == "__main__":
    main()
