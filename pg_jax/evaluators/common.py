"""Evaluators built from the config, run by the trainer and ``pg_jax.evaluate``.

Config schema (one entry per evaluator; the key is the metric prefix)::

    config.evals["docvqa/val"] = dict(
        type="vqa",                 # module pg_jax.evaluators.<type>
        every_steps=200,            # 0: only at the end of training
        # ... the rest are keyword arguments of that module's Evaluator
    )

Every evaluator module defines ``Evaluator(model, *, tokenizer, workdir, **kw)``
with ``run(params) -> Iterator[(metric_name, value)]``; names are
``"<prefix>/<metric>"`` (e.g. ``docvqa/val/anls``).
"""

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

# Keys of an evals entry that the trainer reads; the rest go to the Evaluator.
SCHEDULE_KEYS = ("type", "every_steps")


class Evaluator(Protocol):
    def run(self, params: Any) -> Iterator[tuple[str, float]]: ...


def from_config(
    evals: Mapping[str, Mapping[str, Any]], *, model, tokenizer: str | None, workdir: str | None
) -> dict[str, tuple[Evaluator, int]]:
    """Builds {prefix: (evaluator, every_steps)} from ``config.evals``.

    Args:
      evals: prefix -> entry as in the module docstring.
      model: the ``paligemma.Model``.
      tokenizer: SentencePiece model path (None: the project's small tokenizer).
      workdir: where evaluators may write predictions and reports (None: nowhere).
    """
    built = {}
    for prefix, entry in evals.items():
        entry = dict(entry)
        kind = entry.pop("type")
        every = entry.pop("every_steps", 0)
        module = importlib.import_module(f"pg_jax.evaluators.{kind}")
        evaluator = module.Evaluator(
            model, tokenizer=tokenizer, workdir=workdir, prefix=prefix, **entry
        )
        built[prefix] = (evaluator, every)
    return built


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
