"""The files a Kaggle notebook has attached, and the DocVQA subsets prepared from them.

A Kaggle user attaches a PaliGemma JAX checkpoint from Kaggle Models
(``paligemma-3b-pt-224.f16.npz``, ``paligemma2-3b-pt-448.b16.npz``, ...), its
``paligemma_tokenizer.model`` and the
``HuggingFaceM4/DocumentVQA`` parquet shards; they appear somewhere under ``/kaggle/input``::

    inputs = kaggle.find_inputs()               # or find_inputs(ckpt=..., data=...) to choose
    print(inputs.describe())
    config_arg = kaggle.prepare_subsets(inputs, "/kaggle/working/data", train_questions=2000,
                                        eval_questions=500)
    config = config_cli.load_config(f"configs/docvqa.py:{config_arg}")

With no checkpoint attached, the inputs are the embedded default (the shipped tiny checkpoint,
the project tokenizer and the synthetic DocVQA set): the notebook runs anywhere, CPU included.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os

DEFAULT_ROOT = "/kaggle/input"
# Kaggle Models' PaliGemma JAX files: paligemma-3b-pt-224.f16.npz, paligemma2-3b-pt-448.b16.npz.
CHECKPOINT_PATTERN = "paligemma*.npz"
TOKENIZER_NAME = "paligemma_tokenizer.model"
# Deep enough for Kaggle Models' layout (ROOT/model/framework/variation/version/file) and a
# dataset's (ROOT/dataset/data/train-00000-of-00038.parquet), without walking image folders.
MAX_DEPTH = 6


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What to fine-tune and on what; an empty field is the embedded default's.

    Attributes:
      ckpt: a big_vision .npz (or HF directory); "" = the shipped tiny demo checkpoint.
      tokenizer: its SentencePiece model; "" = the project tokenizer (the demo checkpoint's).
      data: a directory of DocumentVQA parquet shards; "" = the synthetic DocVQA set.
      res: the checkpoint's image side; 0 = the embedded default's.
      notes: what was found and ignored, for ``describe``.
    """

    ckpt: str = ""
    tokenizer: str = ""
    data: str = ""
    res: int = 0
    notes: tuple[str, ...] = ()

    @property
    def embedded(self) -> bool:
        """Whether this is the embedded default model (no checkpoint given or attached)."""
        return not self.ckpt

    def describe(self) -> str:
        lines = [
            f"checkpoint: {self.ckpt or 'the embedded default (shipped tiny PaliGemma)'}"
            + (f" ({self.res} px)" if self.res else ""),
            f"tokenizer:  {self.tokenizer or 'the project tokenizer'}",
            f"data:       {self.data or 'the synthetic DocVQA set (generated on first use)'}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _walk(root: str):
    """(directory, file names) under root, at most MAX_DEPTH levels down, links followed."""
    base = root.rstrip(os.sep).count(os.sep)
    for d, subdirs, files in os.walk(root, followlinks=True):
        if d.count(os.sep) - base >= MAX_DEPTH:
            subdirs.clear()
        subdirs.sort()
        yield d, sorted(files)


def _found(root: str) -> tuple[list[str], list[str], list[str]]:
    """(checkpoints, tokenizers, parquet directories) under root."""
    ckpts, tokenizers, parquet_dirs = [], [], []
    if not os.path.isdir(root):
        return ckpts, tokenizers, parquet_dirs
    for d, files in _walk(root):
        for f in files:
            if fnmatch.fnmatch(f.lower(), CHECKPOINT_PATTERN):
                ckpts.append(os.path.join(d, f))
            elif f == TOKENIZER_NAME:
                tokenizers.append(os.path.join(d, f))
        # The HF layout: {train,validation,test}-NNNNN-of-NNNNN.parquet in one directory.
        if any(f.endswith(".parquet") and f.startswith(("train-", "validation-")) for f in files):
            parquet_dirs.append(d)
    return ckpts, tokenizers, parquet_dirs


def _one(kind: str, found: list[str], root: str, setting: str) -> str:
    if len(found) > 1:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise ValueError(f"{len(found)} {kind} under {root} ({shown}); set {setting} in the "
                         "settings cell to the one to use")
    return found[0] if found else ""


def _exists(path: str, what: str) -> str:
    if path and not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def find_inputs(root: str = DEFAULT_ROOT, *, ckpt: str = "", tokenizer: str = "",
                data: str = "") -> Inputs:
    """The checkpoint, tokenizer and DocumentVQA shards: as given, else as attached under root.

    Args:
      root: where attached inputs appear (Kaggle: /kaggle/input); a missing root has none.
      ckpt: a checkpoint path, or "" to look for one ``paligemma*.npz`` under root.
      tokenizer: a tokenizer path, or "" to look for ``paligemma_tokenizer.model`` (the one
        next to the checkpoint if several).
      data: a DocumentVQA parquet directory, or "" to look for ``train-*.parquet`` /
        ``validation-*.parquet`` shards (a directory named like DocVQA wins over others).

    Returns:
      The Inputs. Without a checkpoint it is the embedded default entirely (an attached
      tokenizer or dataset is noted and ignored: the tiny model has its own vocabulary, and a
      real dataset wants a real model); a checkpoint without data trains on the synthetic set.

    Raises:
      FileNotFoundError: a given path does not exist.
      ValueError: several candidates for one input (set it explicitly), or a checkpoint
        without its tokenizer.
    """
    found_ckpts, found_toks, found_data = _found(root)
    ckpt = _exists(ckpt, "checkpoint") or _one("PaliGemma checkpoints", found_ckpts, root, "CKPT")
    tokenizer = _exists(tokenizer, "tokenizer")
    data = _exists(data, "data directory")
    if not data and len(found_data) > 1:
        named = [d for d in found_data
                 if "docvqa" in os.path.relpath(d, root).lower().replace("document", "doc")]
        found_data = named or found_data
    data = data or _one("directories of DocumentVQA parquet shards", found_data, root, "DATA")

    if not ckpt:
        ignored = [p for p in (tokenizer, data) if p]
        notes = (f"no PaliGemma checkpoint (set CKPT or attach one under {root}): running the "
                 f"embedded default{', ignoring ' + ', '.join(ignored) if ignored else ''}",)
        return Inputs(notes=notes)
    if not tokenizer:
        near = sorted(found_toks, key=lambda t: _distance(t, ckpt))
        if not near:
            raise ValueError(f"checkpoint {ckpt} but no {TOKENIZER_NAME} under {root}; attach "
                             "it or set TOKENIZER in the settings cell")
        tokenizer = near[0]
    from pg_jax.models import loader  # reads the array shapes only

    res = loader.read_model_config(ckpt)["img"]["image_size"]
    notes = () if data else ("no DocumentVQA parquet shards attached: training on the "
                             "synthetic DocVQA set",)
    return Inputs(ckpt=ckpt, tokenizer=tokenizer, data=data, res=res, notes=notes)


def _distance(a: str, b: str) -> int:
    """Directory steps between two files (0: same directory)."""
    rel = os.path.relpath(os.path.dirname(a), os.path.dirname(b))
    return 0 if rel == "." else rel.count(os.sep) + 1


def prepare_subsets(inputs: Inputs, out: str, *, train_questions: int, eval_questions: int,
                    synthetic_pages: int = 2000, sharding: str = "replicate") -> str:
    """Prepares the DocVQA subsets once and returns the arguments of configs/docvqa.py.

    With DocumentVQA shards: the first ``train_questions`` train and ``eval_questions``
    validation questions, resized to the checkpoint's resolution, in ``out`` (a later call with
    the same numbers reuses them; see ``pg_jax.prepare_data``). With the synthetic set: it is
    generated now (``synthetic_pages`` train pages), and the trainer prepares its train split
    into ``out`` on first use.

    Returns:
      ``key=value,...`` for ``configs/docvqa.py:``.
    """
    from pg_jax import prepare_data
    from pg_jax.data import synthetic

    args = {"sharding": sharding}
    if inputs.ckpt:
        args.update(ckpt=inputs.ckpt, tokenizer=inputs.tokenizer, res=inputs.res)
    if inputs.data:
        res = inputs.res
        subsets = {}
        for split, key, limit in (("train", "data", train_questions),
                                  ("validation", "eval_data", eval_questions)):
            subsets[key] = os.path.join(out, f"docvqa_{split}_{res}px_{limit}")
            prepare_data.prepare("hf-parquet", inputs.data, split, subsets[key], limit=limit,
                                 res=res)
        args.update(subsets)
    else:
        # The config's synthetic set (the "demo" pages, seed 0) with this many train pages.
        synthetic.ensure_synthetic(difficulty="demo", num_pages=synthetic_pages)
        cache = os.path.join(out, f"synthetic_train_{inputs.res or 'demo'}px_{synthetic_pages}")
        args.update(synthetic_pages=synthetic_pages, cache_dir=cache)
    return ",".join(f"{k}={v}" for k, v in args.items())
