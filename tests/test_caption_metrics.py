"""Caption metrics against pycocoevalcap itself (its Java PTBTokenizer, Bleu, Rouge, Cider)."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from pixtell.metrics.caption import tokenize

ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
HAVE_JAVA = shutil.which("java") is not None
# PTBTokenizer writes its temporary input file next to its jar, inside the installed package.
PTB_WRITABLE = os.access(os.path.dirname(os.path.abspath(ptb.__file__)), os.W_OK)
needs_ptb = pytest.mark.skipif(
    not (HAVE_JAVA and PTB_WRITABLE), reason="needs java and a writable pycocoevalcap folder"
)

HAND_PICKED = [
    "",
    "   ",
    ".",
    "...",
    "!?",
    "A man riding a wave on top of a surfboard.",
    "A MAN Riding a wave ON TOP of a surfboard .",
    "a man's dog doesn't run; it can't, won't, isn't!",
    "I'm sure you're right, they've said we'll go, she'd agree.",
    "DON'T I'M YOU'RE HE'LL WE'VE It's the dogs' bowls",
    "A sign that says \"STOP\" and a 'one way' sign.",
    "A ``quoted'' word and ‘curly’ “double” quotes, «guillemets».",
    "A well-known t-shirt on a 3-year-old boy with a x-ray.",
    "3.5 inches, 1,000 people at 10:30 on 12/25/2014 for $5 (50% off).",
    "A dog (brown) [left] {right} sits ... and waits..  then leaves....",
    "two   spaces\tand a tab   ",
    "Ends with a trailing period .",
    "Mr. Smith and Dr. Who went to St. Louis, e.g. the U.S. in the a.m.",
    "colour gonna wanna gotta cannot 'tis o'clock rock'n'roll y'all ma'am",
    "a dog — a cat – a bird -- a fish --- a frog - a toad",
    "½ a pizza and 1 1/2 cups of café au lait, naïve über résumé",
    "a cat on a mat a cat on a mat a cat a cat",
    "A&W root beer at AT&T; a&b and/or x+y=z * 2 # 1 @home ~ ^",
    "1990s '90s 4x4 3d 2-3 co-op re-enter self-driving red-and-white",
    "what?! no!!! yes... ok:] hmm;) fine =) dog.the cat,the",
]

_WORDS = str.split(
    "a an the man woman dog Dog DOG cat's men's it's don't can't won't isn't I'm you're "
    "they've we'll she'd o'clock two 3 3.5 1,000 10:30 12 1990s 2-3 t-shirt well-known "
    "3-year-old U.S. Mr. Dr. St. etc. vs. ok OK A c red-and-white hot-dog 4x4 50% $5 AT&T "
    "a&b and/or 1/2 café"
)
_PUNCT = list(".,!?;:-'\"()[]{}/*&+=%") + ["...", "--", "’", "‘", "“", "”", "…", "—"]


def _random_captions(n: int, seed: int) -> list[str]:
    """Caption-like lines: words with punctuation attached, odd spacing and case."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(0, 12)):
            w, k = rng.choice(_WORDS), rng.random()
            if k < 0.15:
                w = rng.choice(_PUNCT) + w
            elif k < 0.4:
                w += rng.choice(_PUNCT)
            if rng.random() < 0.1:
                w = w.upper()
            words.append(w)
        line = rng.choice([" ", "  ", " \t"]).join(words)
        if rng.random() < 0.3:
            line += rng.choice([".", " .", "!", "..."])
        out.append(line)
    return out


def coco_tokenize(captions: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on each caption: its space-joined token strings."""
    out = ptb.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    return [out[i][0] for i in range(len(captions))]


@needs_ptb
def test_tokenize_equals_ptbtokenizer() -> None:
    corpus = HAND_PICKED + _random_captions(1500, seed=0)
    want = coco_tokenize(corpus)
    got = [" ".join(tokenize(c)) for c in corpus]
    bad = [(c, w, g) for c, w, g in zip(corpus, want, got, strict=True) if w != g]
    assert not bad, f"{len(bad)} differ, first: {bad[:3]}"


def test_tokenize_by_hand() -> None:
    assert tokenize("A man's dog doesn't run.") == ["a", "man", "'s", "dog", "does", "n't", "run"]
    assert tokenize("Two  DOGS , one (brown)...") == [
        "two",
        "dogs",
        "one",
        "-lrb-",
        "brown",
        "-rrb-",
    ]
    assert tokenize("gonna cannot") == ["gon", "na", "can", "not"]
    assert tokenize("") == []
    assert tokenize(" . ! ? ") == []
    assert tokenize("what?!") == ["what", "?!"]  # only single marks are dropped
