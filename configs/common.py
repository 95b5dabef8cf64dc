"""Config helpers shared by every config file (big_vision ``configs/common.py`` semantics)."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, *, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
    """Parses ``"key=value,key2=value2"`` against typed defaults.

    ``get_config(arg)`` receives the text after ``:`` in ``--config file.py:res=448,mode=runlocal``.
    Each value is converted to the type of its default (bool accepts true/false/yes/no/1/0);
    a bare ``key`` means ``key=True``. Unknown keys are an error (typos must not pass silently).

    Args:
      arg: the argument string, or None/"" for all defaults.
      lazy: accept unknown keys as strings instead of raising.
      **spec: key -> default value (its type decides the parsing).

    Returns:
      A ConfigDict with one field per key.
    """
    out = ml_collections.ConfigDict(dict(spec))
    if not arg:
        return out
    for item in arg.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in spec:
            if not lazy:
                raise ValueError(
                    f"unknown config argument {key!r} in {arg!r}; known: {', '.join(sorted(spec))}"
                )
            out[key] = value
            continue
        default = spec[key]
        if not eq:
            value = "true"
        out[key] = _convert(key, value, default)
    return out


def _convert(key: str, value: str, default):
    if isinstance(default, bool):
        lowered = value.lower()
        if lowered in ("1", "true", "yes"):
            return True
        if lowered in ("0", "false", "no"):
            return False
        raise ValueError(f"config argument {key}={value!r}: expected a boolean")
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            raise ValueError(
                f"config argument {key}={value!r}: expected {type(default).__name__}"
            ) from None
    return value


def tokenize(key: str, tokenizer: str = "", **kw) -> str:
    """The ``tok`` op for ``key`` (``tokenizer`` "": the small project tokenizer)."""
    args = [f"key={key!r}"] + [f"{k}={v!r}" for k, v in kw.items()]
    if tokenizer:
        args.append(f"model={tokenizer!r}")
    return f"tok({', '.join(args)})"


def combine_and_keep_train(text_len: int, tokenizer: str = "") -> str:
    """Ops after ``prefix`` and ``suffix`` are set: ``[bos] prefix "\\n" suffix [eos]``, padded.

    The sequence is text_len + 1 long (the trainer feeds text[:-1] and scores text[1:]); only
    the suffix is auto-regressive and scored.
    """
    n = text_len + 1
    return "|".join([
        tokenize("prefix", tokenizer, bos="yes"),
        tokenize("septok", tokenizer, text="\n"),
        tokenize("suffix", tokenizer, eos="yes"),
        f"fit({n})",
        "masked_concat(['prefix', 'septok', 'suffix'], mask_ar=[0, 0, 1], mask_loss=[0, 0, 1], "
        + "mask_input=[1, 1, 1])",
        f"tolen({n}, pad_value=0, key='text')|tolen({n}, pad_value=1, key='mask_ar')",
        f"tolen({n}, pad_value=0, key='mask_loss')|tolen({n}, pad_value=0, key='mask_input')",
        "keep('image', 'text', 'mask_ar', 'mask_loss', 'mask_input', 'truncated')",
    ])  # fmt: skip


def combine_and_keep_eval(text_len: int, tokenizer: str = "", keep: tuple = ()) -> str:
    """Ops after ``prefix`` is set: ``[bos] prefix "\\n"``, padded to text_len, for decoding.

    Args:
      text_len: prompt tokens (a longer prefix is cut and counted in ``truncated``).
      tokenizer: SentencePiece path ("": the project tokenizer).
      keep: example keys kept besides the model inputs (answers, ids, ...).
    """
    return "|".join([
        tokenize("prefix", tokenizer, bos="yes"),
        tokenize("septok", tokenizer, text="\n"),
        f"fit({text_len}, suffix=None, min_prefix=1)",
        "masked_concat(['prefix', 'septok'], mask_ar=[0, 0], mask_input=[1, 1])",
        f"tolen({text_len}, pad_value=0, key='text')",
        f"tolen({text_len}, pad_value=1, key='mask_ar')",
        f"tolen({text_len}, pad_value=0, key='mask_input')",
        "keep(" + ", ".join(repr(k) for k in ("image", "text", "mask_ar", "mask_input",
                                              "truncated", *keep)) + ")",
    ])  # fmt: skip
