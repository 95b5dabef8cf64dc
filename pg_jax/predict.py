"""Answer questions about document images with a PaliGemma checkpoint.

One question:
  python -m pg_jax.predict --ckpt /tmp/run/params.npz --image page.png --question "What is the total?"
Many (JSONL lines {"image": ..., "question": ...}, or a CSV with columns image,question; relative
image paths are relative to the file), decoded in batches, one JSON line per answer:
  python -m pg_jax.predict --ckpt CKPT --input questions.jsonl [--output answers.jsonl]

The checkpoint is a big_vision .npz or a Hugging Face directory (``pg_jax.load``). The tokenizer
must be the one the checkpoint was trained with (default: the small project tokenizer; released
PaliGemma checkpoints need ``paligemma_tokenizer.model``); one whose vocabulary size differs from
the checkpoint's is refused. The prompt is ``[bos] question "\\n"`` (big_vision's DocVQA layout), as in
training and evaluation. Images are resized with PIL's antialiased bilinear filter, which differs
slightly from the tf.data eval pipeline's resize; this module needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from pg_jax.pp.tokenizer import Tokenizer


class InputError(ValueError):
    """A bad image, question or input file, with a message naming it."""


# ---------------------------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------------------------
def load_image(path: str, res: int) -> np.ndarray:
    """Reads an image file as the model sees it.

    Args:
      path: any format PIL reads (PNG, JPEG, TIFF...); grayscale and RGBA become RGB.
      res: output side; the page is squashed to a square, as in training.

    Returns:
      float32[res, res, 3] in [-1, 1].
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((res, res), Image.BILINEAR)
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None
    return np.asarray(img, np.float32) / 127.5 - 1.0


def encode_prompts(
    tok: Tokenizer, questions: Sequence[str], text_len: int, prompt: str = "{question}"
) -> dict[str, np.ndarray]:
    """Tokenises ``[bos] prompt "\\n"`` per question, right-padded to ``text_len``.

    A prompt longer than ``text_len`` loses the tail of the question (bos and "\\n" stay), as
    the eval pipeline's ``fit`` does.

    Returns:
      {"text": int32[B, text_len], "mask_input": bool[B, text_len], "mask_ar": int32[B, text_len]}.
    """
    text = np.zeros((len(questions), text_len), np.int32)
    for i, q in enumerate(questions):
        ids = tok.encode(prompt.format(question=q))[: text_len - 2]
        row = [tok.bos_id, *ids, tok.newline_id]
        text[i, : len(row)] = row
    mask_input = text != tok.pad_id
    return {"text": text, "mask_input": mask_input, "mask_ar": np.zeros_like(text)}


def read_requests(path: str) -> list[dict]:
    """[{"image": path, "question": str}] from a JSONL or CSV file, validated.

    Raises:
      InputError: naming the file and line of a missing or empty field.
    """
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        if path.endswith(".csv"):
            rows = list(enumerate(csv.DictReader(f), start=2))  # line 1 is the header
        else:
            rows = []
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{n}: not a JSON object: {e}") from None
    requests = []
    for n, row in rows:
        image, question = row.get("image"), row.get("question")
        if not image:
            raise InputError(f"{path}:{n}: no 'image' field")
        check_question(question, f"{path}:{n} (image {image})")
        requests.append({"image": os.path.join(base, image), "question": question})
    if not requests:
        raise InputError(f"{path} holds no questions")
    return requests


def check_question(question: str | None, where: str) -> None:
    """Refuses a missing or blank question, naming ``where`` it came from."""
    if not question or not question.strip():
        raise InputError(f"empty question for {where}")


# ---------------------------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------------------------
def load_model(ckpt: str, tokenizer: str | None, dtype: str = "float32"):
    """Loads the checkpoint after checking that the tokenizer fits it.

    Args:
      ckpt: a big_vision .npz or an HF model directory.
      tokenizer: SentencePiece model path (None: the small project tokenizer).
      dtype: compute and parameter dtype ("float32", "bfloat16", "float16", or "auto": the
        device's, pg_jax.devices.compute_dtype).

    Returns:
      (model, params, tokenizer).
    """
    from pg_jax.evaluators import common
    from pg_jax.models import loader

    tok = Tokenizer(tokenizer)
    # The config alone (shapes, no weights) is enough to refuse a mismatched tokenizer quickly.
    cfg = loader.read_model_config(ckpt)
    probe = type("Probe", (), {"llm": cfg["llm"]})
    common.check_tokenizer(tok, probe, what=f"checkpoint {ckpt}")
    import jax
    import jax.numpy as jnp

    from pg_jax import devices

    dtype = devices.compute_dtype(dtype, jax.devices()[0]).value
    model, params = loader.load(ckpt, dtype=dtype, param_dtype=jnp.dtype(dtype))
    return model, params, tok


def answer(
    model,
    params,
    tok: Tokenizer,
    requests: Sequence[dict],
    *,
    batch_size: int = 8,
    text_len: int = 64,
    max_decode_len: int = 32,
    prompt: str = "{question}",
) -> list[str]:
    """Greedy answers to [{"image", "question"}] requests, in batches of ``batch_size``.

    The last batch is padded (by repeating its first request) so every batch has one shape and
    the decode loop compiles once.
    """
    from pg_jax.decode import decode, decoding_params

    params = decoding_params(model, params)  # once, not per batch
    res = model.img["image_size"]
    out = []
    for start in range(0, len(requests), batch_size):
        chunk = list(requests[start : start + batch_size])
        n = len(chunk)
        chunk += [chunk[0]] * (batch_size - n)
        batch = encode_prompts(tok, [r["question"] for r in chunk], text_len, prompt)
        batch["image"] = np.stack([load_image(r["image"], res) for r in chunk])
        tokens = np.asarray(
            decode(model, params, batch, max_decode_len=max_decode_len, eos_id=tok.eos_id)
        )
        out += [tok.decode(t) for t in tokens[:n]]
    return out


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pg_jax.predict",
        description="Answer questions about document images with a PaliGemma checkpoint.",
        epilog="Example: python -m pg_jax.predict --ckpt /tmp/run/params.npz --image page.png "
        '--question "What is the total?"',
    )
    p.add_argument("--ckpt", required=True, help="big_vision .npz file or Hugging Face directory")
    p.add_argument("--tokenizer", default=None,
                   help="SentencePiece .model the checkpoint was trained with "
                   "(default: the small project tokenizer)")  # fmt: skip
    p.add_argument("--image", help="one image file (with --question)")
    p.add_argument("--question", help="the question about --image")
    p.add_argument("--input", help="JSONL ({'image','question'} per line) or CSV (image,question)")
    p.add_argument("--output", help="with --input: write JSONL answers here instead of stdout")
    p.add_argument("--batch_size", type=int, default=8, help="questions decoded together")
    p.add_argument("--max_decode_len", type=int, default=32, help="answer tokens at most")
    p.add_argument("--text_len", type=int, default=64, help="prompt tokens (longer is cut)")
    p.add_argument("--prompt", default="{question}",
                   help='prompt template, e.g. "answer en {question}" for HF-style fine-tunes')  # fmt: skip
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype (auto: bfloat16, float16 on GPUs without it, "
                   "float32 on CPU)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (errors are printed to stderr, status 2)."""
    p = _parser()
    a = p.parse_args(argv)
    if bool(a.input) == bool(a.image or a.question):
        p.error("give either --image and --question, or --input")
    try:
        # Validate every input before the (slow) checkpoint load.
        if a.input:
            requests = read_requests(a.input)
        else:
            if not a.image:
                raise InputError("--question needs --image")
            check_question(a.question, f"image {a.image}")
            requests = [{"image": a.image, "question": a.question}]
        for r in requests:
            load_image(r["image"], 14)  # Opens and decodes: fails here, naming the file.
        model, params, tok = load_model(a.ckpt, a.tokenizer, a.dtype)
    except (ValueError, OSError) as e:  # InputError, CheckpointError: messages name the file.
        print(f"error: {e}", file=sys.stderr)
        return 2
    answers = answer(
        model, params, tok, requests, batch_size=min(a.batch_size, len(requests)),
        text_len=a.text_len, max_decode_len=a.max_decode_len, prompt=a.prompt,
    )  # fmt: skip
    if not a.input:
        print(answers[0])
        return 0
    lines = [
        json.dumps({**r, "answer": ans}, ensure_ascii=False) for r, ans in zip(requests, answers)
    ]
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} answers to {a.output}", file=sys.stderr)
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
