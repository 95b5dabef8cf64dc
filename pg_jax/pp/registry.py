"""The registry: a name -> factory map, and the parser for `name(arg, key=value)` strings.

The registry is pg_jax's only global. Preprocessing ops register as `preprocess_ops.<op>`:

  @Registry.register("preprocess_ops.resize")
  def get_resize(size, *, key="image"): ...

  Registry.lookup("preprocess_ops.resize(448, key='img')")()  # calls get_resize(448, key='img')

This module does not import TensorFlow, so other registries (models, evaluators) may use it.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from typing import Any


def parse_name(spec: str) -> tuple[str, tuple, dict]:
    """Parses `name`, `name(args)` or `a.b.name(args, k=v)` with literal arguments.

    Args:
      spec: the string to parse.

    Returns:
      (name, positional args, keyword args).

    Raises:
      ValueError: on anything but a (dotted) name optionally called with Python literals.
    """
    try:
        expr = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"Cannot parse {spec!r}: {e}") from e
    args, kwargs = (), {}
    if isinstance(expr, ast.Call):
        try:
            args = tuple(ast.literal_eval(a) for a in expr.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in expr.keywords}
        except ValueError as e:
            raise ValueError(f"Arguments of {spec!r} must be Python literals.") from e
        if any(k is None for k in kwargs):
            raise ValueError(f"{spec!r}: **kwargs expansion is not allowed.")
        expr = expr.func
    return _dotted(expr, spec), args, kwargs


def _dotted(node: ast.AST, spec: str) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value, spec)}.{node.attr}"
    raise ValueError(f"{spec!r} is not of the form name(args).")


class Registry:
    """Global map from names (e.g. "preprocess_ops.resize") to factories."""

    _items: dict[str, Callable] = {}

    @staticmethod
    def register(name: str, replace: bool = False) -> Callable[[Callable], Callable]:
        """Decorator registering a factory under `name`.

        Args:
          name: full name, e.g. "preprocess_ops.decode".
          replace: allow overriding an existing entry (tests); otherwise a clash raises.

        Returns:
          The decorator; it returns the factory unchanged.
        """

        def _register(item: Callable) -> Callable:
            if name in Registry._items and not replace:
                raise KeyError(f"{name!r} is already registered.")
            Registry._items[name] = item
            return item

        return _register

    @staticmethod
    def lookup(spec: str, **kwargs_extra: Any) -> Callable:
        """Returns the factory for `spec`, with the arguments in `spec` bound.

        Args:
          spec: "prefix.name(args...)".
          **kwargs_extra: more keyword arguments to bind.

        Returns:
          A callable; call it (with any remaining arguments) to build the object.
        """
        name, args, kwargs = parse_name(spec)
        if name not in Registry._items:
            prefix = name.rsplit(".", 1)[0]
            known = sorted(k for k in Registry._items if k.startswith(prefix + "."))
            raise KeyError(f"Unknown {name!r}; registered: {known}. Was its module imported?")
        return functools.partial(Registry._items[name], *args, **kwargs, **kwargs_extra)

    @staticmethod
    def knows(spec: str) -> bool:
        """Whether the name in `spec` is registered."""
        return parse_name(spec)[0] in Registry._items
