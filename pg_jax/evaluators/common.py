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
