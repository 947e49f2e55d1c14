"""Caption vocabulary: words seen at least ``min_word_count`` times, saved as ``vocab.json``."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from pixtell.data.images import StrPath

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS: tuple[str, str, str, str] = ("<pad>", "<start>", "<end>", "<unk>")
_FORMAT = "pixtell-vocab"
_VERSION = 1


def tokenize(text: str) -> list[str]:
    """The tokenizer the caption metrics use (PTB style), so vocabulary and scores agree."""
    from pixtell.metrics.caption import tokenize as metric_tokenize

    return metric_tokenize(text)


class Vocabulary:
    """Word <-> id mapping with ``<pad>``=0, ``<start>``=1, ``<end>``=2, ``<unk>``=3.

    Build it from the training split's captions only (``Vocabulary.build`` or
    ``pixtell.caption.data.build_vocabulary``), so held-out words stay ``<unk>``.
    """

    def __init__(self, words: Sequence[str], *, min_word_count: int = 1) -> None:
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.itos: list[str] = words
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(words)}
        self.min_word_count = min_word_count

    @classmethod
    def build(cls, captions: Iterable[str], *, min_word_count: int = 5) -> Vocabulary:
        """Words occurring at least ``min_word_count`` times, most frequent first (ties A-Z)."""
        if min_word_count < 1:
            raise ValueError(f"min_word_count must be >= 1, got {min_word_count}")
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_word_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))  # fmt: skip
        return cls(list(SPECIALS) + kept, min_word_count=min_word_count)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, min_word_count={self.min_word_count})"

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """``<start>`` word ids ``<end>``; ``max_len`` caps the total length (ends kept)."""
        ids = [self.stoi.get(w, UNK) for w in tokenize(caption)]
        if max_len is not None:
            if max_len < 2:
                raise ValueError(f"max_len must be >= 2 (<start> and <end>), got {max_len}")
            ids = ids[: max_len - 2]
        return [START, *ids, END]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first ``<end>``, special tokens left out."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i >= len(SPECIALS):
                words.append(self.itos[i])
        return " ".join(words)

    def save(self, path: StrPath) -> Path:
        """Write ``vocab.json`` (a folder gets ``vocab.json`` inside it); atomic."""
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.json"
        data = {
            "format": _FORMAT,
            "version": _VERSION,
            "min_word_count": self.min_word_count,
            "words": self.itos,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, ensure_ascii=False)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: StrPath) -> Vocabulary:
        """Read a file written by ``save`` (or the ``vocab.json`` in a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            words = data["words"]
            if data.get("format") != _FORMAT or not all(isinstance(w, str) for w in words):
                raise ValueError("not a pixtell vocabulary")
            if tuple(words[: len(SPECIALS)]) != SPECIALS:
                raise ValueError(f"the first words must be {', '.join(SPECIALS)}")
            return cls(words, min_word_count=int(data.get("min_word_count", 1)))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a usable vocab.json ({exc})") from exc
