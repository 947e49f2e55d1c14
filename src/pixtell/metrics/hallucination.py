"""Which classes a caption names, and object hallucination (CHAIR, Rohrbach et al. 2018).

A caption *mentions* a class when a run of its tokens equals one of the class's phrases: the
class name (``_`` read as a space) or a user synonym, in singular or plural form. Captions
and phrases are tokenized as the caption metrics tokenize (:func:`pixtell.metrics.caption.
tokenize`: lower case, punctuation dropped, "dog's" → "dog" "'s"), so matching is by whole
words: "substantial" never mentions "ant" and "dogma" never mentions "dog". Scanning goes left
to right and takes the longest phrase first, so "a traffic light" names "traffic light" once
and not also "light"; no token counts toward two mentions.

CHAIR follows the reference implementation (github.com/LisaAnne/Hallucination,
``utils/chair.py``): CHAIR_i = hallucinated mentions / all mentions, counting every occurrence;
CHAIR_s = captions with at least one hallucinated mention / all captions.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pixtell.metrics.caption import tokenize

__all__ = [
    "ChairResult",
    "Mention",
    "chair",
    "find_mentions",
    "load_synonyms",
    "mention_rate",
    "mentions",
    "phrase_forms",
    "plural_forms",
    "truth_from_boxes",
]

K = TypeVar("K", bound=Hashable)
Synonyms = Mapping[str, Sequence[str]]

# Irregular plurals (singular -> plurals). Regular ones come from the rules in plural_forms.
_IRREGULAR: dict[str, tuple[str, ...]] = {
    "person": ("people", "persons"),
    "man": ("men",),
    "woman": ("women",),
    "child": ("children",),
    "mouse": ("mice",),
    "goose": ("geese",),
    "foot": ("feet",),
    "tooth": ("teeth",),
    "ox": ("oxen",),
    "louse": ("lice",),
    "die": ("dice",),
    "cactus": ("cacti", "cactuses"),
    "sheep": ("sheep",),
    "fish": ("fish", "fishes"),
    "deer": ("deer",),
    "moose": ("moose",),
    "bison": ("bison",),
    "aircraft": ("aircraft",),
    "series": ("series",),
    "species": ("species",),
}
_SINGULAR_OF = {p: s for s, ps in _IRREGULAR.items() for p in ps}
_VOWELS = set("aeiou")
_SIBILANT = ("s", "x", "z", "ch", "sh")


def plural_forms(word: str) -> set[str]:
    """``word`` and its plural(s) by a small rule set plus irregulars; also the singular(s)
    of a plural, so a class folder named "dogs" matches "dog" too.

    Over-generation is harmless here (a form nobody writes is never matched), so ambiguous
    cases keep both forms: "roof" → roofs/rooves, "photo" → photos/photoes.
    """
    w = word.lower()
    singulars = {w, *(s for s in [_SINGULAR_OF.get(w)] if s)}
    if w.endswith("ies") and len(w) > 4:
        singulars |= {w[:-3] + "y", w[:-1]}  # berries -> berry, ties -> tie
    elif w.endswith("ves") and len(w) > 4:
        singulars |= {w[:-3] + "f", w[:-3] + "fe"}
    elif w.endswith("es") and w[:-2].endswith(_SIBILANT) and len(w) > 3:
        singulars |= {w[:-2], w[:-1]}  # buses -> bus, horses -> horse
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        singulars.add(w[:-1])
    forms = set(singulars)
    for s in singulars:
        forms.update(_IRREGULAR.get(s, ()))
        if s.endswith("man") and len(s) > 3:
            forms.add(s[:-3] + "men")  # fireman -> firemen
        if s.endswith(_SIBILANT):
            forms.add(s + "es")
        elif s.endswith("y") and len(s) > 1 and s[-2] not in _VOWELS:
            forms.add(s[:-1] + "ies")
        else:
            forms.add(s + "s")
            if s.endswith("fe"):
                forms.add(s[:-2] + "ves")
            elif s.endswith("f"):
                forms.add(s[:-1] + "ves")
            elif s.endswith("o"):
                forms.add(s + "es")
    return forms


def phrase_forms(phrase: str) -> set[tuple[str, ...]]:
    """Token sequences of a phrase: each plural form of its last word; "traffic light" is
    also matched as the one PTB token "traffic-light"."""
    words = tokenize(phrase.replace("_", " "))
    if not words:
        return set()
    out = {(*words[:-1], form) for form in plural_forms(words[-1])}
    if len(words) > 1:
        out |= {("-".join(v),) for v in list(out)}
    return out


@functools.lru_cache(maxsize=64)
def _table(
    vocabulary: tuple[str, ...], synonyms: tuple[tuple[str, tuple[str, ...]], ...]
) -> tuple[dict[tuple[str, ...], str], int]:
    """{token sequence: class} for every phrase, and the longest sequence's length."""
    table: dict[tuple[str, ...], str] = {}
    extra = dict(synonyms)
    for cls in vocabulary:
        for phrase in (cls, *extra.get(cls, ())):
            for seq in phrase_forms(phrase):
                other = table.setdefault(seq, cls)
                if other != cls:
                    raise ValueError(
                        f"'{' '.join(seq)}' names both {other!r} and {cls!r}: "
                        "give each phrase to one class only"
                    )
    return table, max((len(s) for s in table), default=0)


def _key(vocabulary: Iterable[str], synonyms: Synonyms | None) -> tuple:
    vocab = tuple(dict.fromkeys(vocabulary))
    syn = tuple(sorted((k, tuple(v)) for k, v in (synonyms or {}).items() if k in vocab))
    return vocab, syn


@dataclass(frozen=True)
class Mention:
    """One occurrence of a class in a caption: its tokens ``[start, end)`` of ``tokenize``."""

    cls: str
    start: int
    end: int
    text: str


def find_mentions(
    caption: str, vocabulary: Iterable[str], synonyms: Synonyms | None = None
) -> list[Mention]:
    """Every occurrence of a class in ``caption``, left to right, longest phrase first.

    ``synonyms`` maps a class to extra phrases; classes not in ``vocabulary`` are ignored,
    so one synonyms file can serve several models. A phrase given to two classes is an error.
    """
    table, longest = _table(*_key(vocabulary, synonyms))
    tokens = tokenize(caption)
    found: list[Mention] = []
    i = 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            cls = table.get(tuple(tokens[i : i + n]))
            if cls is not None:
                found.append(Mention(cls, i, i + n, " ".join(tokens[i : i + n])))
                i += n
                break
        else:
            i += 1
    return found


def mentions(caption: str, vocabulary: Iterable[str], synonyms: Synonyms | None = None) -> set[str]:
    """The classes of ``vocabulary`` that ``caption`` names (see :func:`find_mentions`)."""
    return {m.cls for m in find_mentions(caption, vocabulary, synonyms)}


@dataclass
class ChairResult:
    """CHAIR_i and CHAIR_s with their counts; ``hallucinated[id]`` lists the hallucinated
    class of every offending mention of that caption (empty when none)."""

    chair_i: float
    chair_s: float
    mentions: int
    hallucinated_mentions: int
    captions: int
    hallucinated_captions: int
    hallucinated: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "CHAIR_i": self.chair_i,
            "CHAIR_s": self.chair_s,
            "mentions": self.mentions,
            "hallucinated_mentions": self.hallucinated_mentions,
            "captions": self.captions,
            "hallucinated_captions": self.hallucinated_captions,
        }


def chair(
    captions: Mapping[K, str],
    truth: Mapping[K, Iterable[str]],
    vocabulary: Iterable[str],
    synonyms: Synonyms | None = None,
) -> ChairResult:
    """CHAIR_i (hallucinated / all class mentions, every occurrence counted) and CHAIR_s
    (captions with a hallucinated mention / all captions) of ``captions`` against the
    classes ``truth[id]`` present in each image. CHAIR_i is 0 when nothing is mentioned."""
    if not captions:
        raise ValueError("CHAIR needs at least one caption")
    missing = [k for k in captions if k not in truth]
    if missing:
        raise ValueError(
            f"no ground-truth objects for {len(missing)} captions, e.g. {missing[0]!r}"
        )
    vocab = list(vocabulary)
    n_mentions = n_bad = n_bad_caps = 0
    per: dict = {}
    for k, text in captions.items():
        present = set(truth[k])
        found = find_mentions(text, vocab, synonyms)
        bad = [m.cls for m in found if m.cls not in present]
        per[k] = bad
        n_mentions += len(found)
        n_bad += len(bad)
        n_bad_caps += bool(bad)
    return ChairResult(
        chair_i=n_bad / n_mentions if n_mentions else 0.0,
        chair_s=n_bad_caps / len(captions),
        mentions=n_mentions,
        hallucinated_mentions=n_bad,
        captions=len(captions),
        hallucinated_captions=n_bad_caps,
        hallucinated=per,
    )


def mention_rate(
    captions: Mapping[K, str],
    labels: Mapping[K, str],
    vocabulary: Iterable[str],
    synonyms: Synonyms | None = None,
) -> float:
    """The fraction of captions that name their label (ground truth or predicted)."""
    if not captions:
        raise ValueError("mention rate needs at least one caption")
    vocab = list(vocabulary)
    hits = sum(labels[k] in mentions(text, vocab, synonyms) for k, text in captions.items())
    return hits / len(captions)


def truth_from_boxes(
    labels: Mapping[K, Iterable[str | int]], class_names: Sequence[str] | None = None
) -> dict[K, set[str]]:
    """Per-image sets of the classes present, from each image's box labels (names, or ids
    into ``class_names``)."""
    out: dict[K, set[str]] = {}
    for k, labs in labels.items():
        names = set()
        for lab in labs:
            if isinstance(lab, str):
                names.add(lab)
            elif class_names is None:
                raise ValueError(f"box label {lab!r} of {k!r} is an id: pass class_names")
            else:
                names.add(class_names[int(lab)])
        out[k] = names
    return out


def load_synonyms(path: str | Path) -> dict[str, list[str]]:
    """A YAML file ``{class: [phrase, ...]}`` (a single phrase may stand alone) as a dict;
    problems raise one-line errors naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"synonyms file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"synonyms file {path} is not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ValueError(f"synonyms file {path} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"synonyms file {path} must map each class to a list of phrases")
    out: dict[str, list[str]] = {}
    for cls, phrases in data.items():
        if isinstance(phrases, str):
            phrases = [phrases]
        if phrases is None:
            phrases = []
        if not isinstance(phrases, list) or not all(
            isinstance(p, str) and p.strip() for p in phrases
        ):
            raise ValueError(
                f"synonyms file {path}: {cls!r} must map to a list of non-empty phrases"
            )
        out[str(cls)] = [p.strip() for p in phrases]
    return out
