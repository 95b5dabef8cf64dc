"""SentencePiece tokenizer wrapper with PaliGemma's special ids.

Works with the released `paligemma_tokenizer.model` (257152 pieces: Gemma's 256000, then
`<loc0000>`..`<loc1023>` and `<seg000>`..`<seg127>`) and with the small project tokenizer in
`pg_jax/assets/` (same special ids and the same loc/seg tail, fewer text pieces).

This module must not import TensorFlow: the GPU machines that decode and evaluate have none.

Example:
    tok = Tokenizer(get_default_tokenizer_path())
    ids = tok.encode("What is the total?")   # no bos/eos added
    tok.decode(ids + [tok.eos_id, 57])       # -> "What is the total?" (stops at eos)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import sentencepiece as spm

_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_TOKENIZER = "pg_jax_small_tokenizer.model"


def get_default_tokenizer_path() -> str:
    """Returns the path of the small project tokenizer shipped in `pg_jax/assets/`."""
    return os.path.join(_ASSETS, DEFAULT_TOKENIZER)


class Tokenizer:
    """Thin wrapper over `sentencepiece.SentencePieceProcessor`.

    Attributes:
        pad_id, eos_id, bos_id: PaliGemma's special ids (0, 1, 2); checked against the model file.
        vocab_size: number of pieces in the model.
        newline_id: id of the single "\\n" piece (108 in the real tokenizer).
    """

    pad_id = 0
    eos_id = 1
    bos_id = 2

    def __init__(self, path: str | None = None):
        """Loads a SentencePiece model.

        Args:
            path: path of a `.model` file; None means the small project tokenizer.
        """
        self.path = path or get_default_tokenizer_path()
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"Tokenizer model not found: {self.path}")
        self._sp = spm.SentencePieceProcessor(model_file=self.path)
        # A model with other special ids would silently break the masks and the decoder's eos stop.
        got = (self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id())
        if got != (self.pad_id, self.eos_id, self.bos_id):
            raise ValueError(f"{self.path}: expected pad/eos/bos ids (0, 1, 2), got {got}.")
        self.vocab_size: int = self._sp.get_piece_size()
        self.newline_id: int = self._find_newline()

    def _find_newline(self) -> int:
        ids = self._sp.encode("\n")
        if len(ids) != 1:
            raise ValueError(f"{self.path}: '\\n' is not a single piece (got {ids}).")
        return ids[0]

    def encode(self, text: str) -> list[int]:
        """Encodes text to ids, without bos or eos.

        Args:
            text: a Python string.

        Returns:
            The list of token ids.
        """
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes several strings at once (SentencePiece threads the batch)."""
        return self._sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes ids to text, stopping at the first eos and dropping pad and bos.

        Args:
            ids: token ids (a list, or a 1-D numpy array).

        Returns:
            The decoded string.
        """
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(i)
        return self._sp.decode(out)

    def id_to_piece(self, i: int) -> str:
        """Returns the piece string of one id (e.g. '<loc0000>')."""
        return self._sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        """Returns the id of one piece (unk id if absent)."""
        return self._sp.piece_to_id(piece)
