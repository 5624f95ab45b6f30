"""The TIPS SentencePiece tokenizer: lowercase, no BOS/EOS, truncate and right-pad to 64."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import sentencepiece

from ..errors import TipsomalyError


class TokenizerError(TipsomalyError, ValueError):
    """A tokenizer file is not a SentencePiece model, or a text has nothing to embed."""


class TokenizerNotFoundError(TipsomalyError, FileNotFoundError):
    """The ``tokenizer.model`` file is missing."""


class Tokenizer:
    """Wraps a SentencePiece ``tokenizer.model`` (pad id 0).

    ``tokenizer(texts)`` returns ``(ids, paddings)``, two int64 arrays of shape (B, max_len);
    ``paddings`` is 1 at padded positions.
    """

    def __init__(self, model_file: str | os.PathLike, max_len: int = 64) -> None:
        self.model_file = os.fspath(model_file)
        if not os.path.isfile(self.model_file):
            raise TokenizerNotFoundError(
                f"tokenizer model not found: {self.model_file}; every TIPS model uses "
                "tokenizer.model from the TIPS release (`tipsomaly weights path l14h` names it)"
            )
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=self.model_file)
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(
                f"{self.model_file} is not a valid SentencePiece model ({exc})"
            ) from None
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (lowercased, no BOS/EOS, not truncated)."""
        return self._sp.encode(text.lower(), add_bos=False, add_eos=False)

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, paddings)`` of ``texts``: int64 (B, max_len), truncated and right-padded."""
        if isinstance(texts, str):
            texts = [texts]
        ids = np.zeros((len(texts), self.max_len), dtype=np.int64)
        paddings = np.ones((len(texts), self.max_len), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = self.encode(text)[: self.max_len]
            if not tokens:
                raise TokenizerError(f"empty text at position {row} ({text!r}): nothing to embed")
            ids[row, : len(tokens)] = tokens
            paddings[row, : len(tokens)] = 0
        return ids, paddings
