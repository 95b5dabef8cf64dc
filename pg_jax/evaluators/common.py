"""Evaluators built from the config, run by the trainer and ``pg_jax.evaluate``.

Config schema (one entry per evaluator; the key is the metric prefix)::

    config.evals["docvqa/val"] = dict(
        type="vqa",                 # module pg_jax.evaluators.<type>
        every_steps=200,            # 0: only at the end of training
        data=dict(name="docvqa", path=D, split="val"),   # pg_jax.data.core.get arguments
        pp_fn="decode|resize(448)|...",                  # the eval split's preprocessing
        batch_size=16,              # per process; the last batch is padded and masked
        # ... the rest are keyword arguments of that module's Evaluator
    )

Evaluators do not build their inputs: ``from_config`` hands each one the model's predict
functions (``pg_jax.predict_fns``), its batches (``EvalData``) and the tokenizer, as
``Evaluator(predict_fns, data, *, tokenizer, workdir, prefix, **its arguments)``, with
``run(params) -> Iterator[(metric_name, value)]``; names are ``"<prefix>/<metric>"`` (e.g.
``docvqa/val/anls``). An argument the evaluator does not take is a config error.
"""

import importlib
import inspect
import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from pg_jax import predict_fns as predict_fns_lib
from pg_jax.pp.tokenizer import Tokenizer

# Keys of an evals entry that the trainer reads; the rest go to the Evaluator.
SCHEDULE_KEYS = ("type", "every_steps")
# Keys every entry may set; from_config builds the evaluator's data from them.
DATA_KEYS = ("data", "pp_fn", "batch_size")
# What from_config passes itself.
_INJECTED = ("predict_fns", "data", "tokenizer", "workdir", "prefix")


class Evaluator(Protocol):
    def run(self, params: Any) -> Iterator[tuple[str, float]]: ...


class EvalData:
    """One pass over an eval split, preprocessed and batched (``input_pipeline.eval_batches``).

    Attributes:
      source: the data source (``pg_jax.data.core.get(**spec)``); its ``skips`` (if any) say
        which questions the reader could not use.
      batch_size: rows per batch (per process).
    """

    def __init__(self, spec: Mapping, pp_fn: str, batch_size: int):
        from pg_jax.data import core  # TensorFlow-backed readers: imported only to evaluate

        self.source = core.get(**dict(spec))
        self.pp_fn, self.batch_size = pp_fn, batch_size

    def batches(self) -> Iterator[dict]:
        """This process's batches; ``_mask`` marks real rows (see ``eval_batches``)."""
        from pg_jax.data import input_pipeline

        return input_pipeline.eval_batches(self.source, self.pp_fn, batch_size=self.batch_size)

    def num_batches(self) -> int:
        """Batches per process: every process runs as many as the busiest one."""
        import jax

        count = jax.process_count()
        n = max(self.source.num_examples_for(i, count) for i in range(count))
        return math.ceil(n / self.batch_size)


def from_config(
    evals: Mapping[str, Mapping[str, Any]], *, model, tokenizer: str | None, workdir: str | None
) -> dict[str, tuple[Evaluator, int]]:
    """Builds {prefix: (evaluator, every_steps)} from ``config.evals``.

    Args:
      evals: prefix -> entry as in the module docstring.
      model: the ``paligemma.Model``; its predict functions are handed to the evaluators.
      tokenizer: SentencePiece model path (None: the project's small tokenizer); its vocabulary
        must be the model's.
      workdir: where evaluators may write predictions and reports (None: nowhere).
    """
    built = {}
    if evals:
        tok = Tokenizer(tokenizer)
        check_tokenizer(tok, model, what="the model")
        predict_fns = predict_fns_lib.get_all(model)
    for prefix, entry in evals.items():
        entry = dict(entry)
        kind = entry.pop("type")
        every = entry.pop("every_steps", 0)
        module = importlib.import_module(f"pg_jax.evaluators.{kind}")
        missing = [k for k in ("data", "pp_fn") if k not in entry]
        if missing:
            raise ValueError(f"config.evals[{prefix!r}] (type {kind!r}) lacks {missing}")
        _check_arguments(module.Evaluator, entry, prefix, kind)
        data = EvalData(entry.pop("data"), entry.pop("pp_fn"), entry.pop("batch_size", 16))
        built[prefix] = (module.Evaluator(predict_fns, data, tokenizer=tok, workdir=workdir,
                                          prefix=prefix, **entry), every)
    return built


def _check_arguments(cls, entry: Mapping, prefix: str, kind: str) -> None:
    """Refuses entry keys that the evaluator does not take (a typo must not pass silently)."""
    params = inspect.signature(cls).parameters
    takes = [n for n in params if n not in _INJECTED]
    unknown = [k for k in entry if k not in takes and k not in DATA_KEYS]
    if unknown:
        raise ValueError(
            f"config.evals[{prefix!r}]: the {kind!r} evaluator takes no argument "
            f"{unknown[0]!r}; it takes {', '.join(sorted([*takes, *DATA_KEYS]))}"
        )


def check_tokenizer(tokenizer, model, what: str = "the checkpoint") -> None:
    """Refuses a tokenizer whose vocabulary is not the model's.

    A smaller tokenizer would decode ids it never produced into garbage, a larger one would
    feed the embedding out-of-range ids; both fail silently, so refuse loudly instead.

    Args:
      tokenizer: a ``pg_jax.pp.tokenizer.Tokenizer``.
      model: a ``paligemma.Model``.
      what: how to name the model in the message (e.g. its path).
    """
    model_vocab = model.llm["vocab_size"]
    if tokenizer.vocab_size != model_vocab:
        raise ValueError(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but {what} has a "
            f"vocabulary of {model_vocab}; pass the tokenizer the model was trained with "
            "(--tokenizer; the released PaliGemma models use paligemma_tokenizer.model, "
            "257152 pieces)."
        )


def metric_file_stem(prefix: str) -> str:
    """File name stem of an evaluator's outputs: "docvqa/val" -> "docvqa_val"."""
    return prefix.replace("/", "_")
