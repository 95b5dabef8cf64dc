"""Configs from the command line: ``--config file.py[:args]`` and ``--config.key=value``.

absl's config flag reports an unknown override key or a value of the wrong type as a 55-line
traceback (or a "FATAL Flags parsing error" about ml_collections' types). ``parse_flags`` is
the trainer's flags parser instead: on such an error it prints one line naming the key, the
nearest valid keys or the expected type, and exits with status 2.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys

USAGE_ERROR = 2  # exit status of a command-line or config mistake (argparse's convention)


def load_config(spec: str):
    """``path/to/config.py[:arg]`` -> ``get_config(arg)``, as ml_collections' config flag does."""
    path, _, arg = spec.partition(":")
    return _config_module(path).get_config(arg or None)


def _config_module(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    # Configs import siblings as ``configs.common``: put the directory above configs/ on the path.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)
    module_spec = importlib.util.spec_from_file_location("_pg_jax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _leaf_types(config, prefix: str = "") -> dict[str, type]:
    """{"input.batch_size": int, ...} for every field of a ConfigDict, nested ones included
    (a typed placeholder that is None has its declared type)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        out[name] = config.get_type(key)
        if hasattr(value, "items") and hasattr(value, "lock"):  # a nested ConfigDict
            out.update(_leaf_types(value, name + "."))
    return out


def diagnose_override(config, key: str, value: str | None, args: tuple[str, ...] = ()) -> str | None:
    """Why ``--config.{key}={value}`` cannot apply to `config`, or None if it can.

    Args:
      config: the ConfigDict built by the config file.
      key: the dotted key after ``--config.``.
      value: the text after ``=`` (None for a bare boolean flag).
      args: the config file's structural arguments (``file.py:key=value``), for a hint.
    """
    fields = _leaf_types(config)
    if key not in fields and key in args:
        return (f"config.{key} is not a config key but a config argument: pass it after the "
                f"file name, --config path/to/config.py:{key}={value or '...'}")
    if key not in fields:
        parent = key.rpartition(".")[0]
        candidates = [k for k in fields if k.rpartition(".")[0] == parent] or list(fields)
        near = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
        hint = f"; nearest: {', '.join('config.' + k for k in near)}" if near else ""
        return f"unknown config key config.{key}{hint}"
    kind = fields[key]
    if value is None or kind in (str, type(None)):
        return None
    if kind is bool:
        ok = value.lower() in ("true", "false", "1", "0", "yes", "no")
    elif kind in (int, float):
        try:
            kind(value)
            ok = True
        except ValueError:
            ok = False
    else:
        return None
    if not ok:
        return f"config.{key}={value!r}: expected {kind.__name__}"
    return None


def _overrides(argv: list[str], name: str) -> list[tuple[str, str | None]]:
    """(key, value) for each ``--{name}.key[=value]`` argument."""
    out = []
    for a in argv:
        if a.startswith(f"--{name}."):
            key, eq, value = a[len(name) + 3 :].partition("=")
            out.append((key, value if eq else None))
    return out


def _config_spec(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def parse_flags(argv: list[str], config_flag: str = "config") -> list[str]:
    """absl flags parser with one-line config errors (use as ``app.run(main, flags_parser=)``).

    Returns:
      The remaining arguments, as absl's default parser does.
    """
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - absl, ml_collections and the config file raise many types
        message = None
        spec = _config_spec(argv[1:], config_flag)
        if spec:
            path, _, arg = spec.partition(":")
            try:
                module = _config_module(path)
                config = module.get_config(arg or None)
            except Exception as inner:  # noqa: BLE001 - the config file's own error
                message = f"--{config_flag} {spec}: {inner}"
            else:
                args = tuple(getattr(module, "CONFIG_ARGS", ()))
                for key, value in _overrides(argv[1:], config_flag):
                    message = diagnose_override(config, key, value, args)
                    if message:
                        break
        if message is None:
            text = " ".join(str(e).split())
            message = text if len(text) < 400 else text[:400] + " ..."
        print(f"error: {message}", file=sys.stderr)
        print("Run with --help for the flags; configs/*.py docstrings list the config keys.",
              file=sys.stderr)
        sys.exit(USAGE_ERROR)
