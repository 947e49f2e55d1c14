"""Caption metrics against pycocoevalcap itself (its Java PTBTokenizer, Bleu, Rouge, Cider)."""

from __future__ import annotations

import math
import os
import random
import shutil
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixtell.metrics import caption as cm
from pixtell.metrics.caption import per_image_scores, perplexity, score, tokenize, tokenize_batch

ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

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
    "a sign with the letter a.",  # "a." splits when the next line opens a sentence ...
    "The dog sits. He waits for plan b.",
    "Two cats on a.",  # ... but not before "Two"
    "Two dogs",
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
    got = [" ".join(t) for t in tokenize_batch(corpus)]
    assert got[-1] == " ".join(tokenize(corpus[-1]))  # the last line has no next line
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
    assert tokenize("the letter a.") == ["the", "letter", "a."]
    assert tokenize_batch(["the letter a.", "The end"])[0] == ["the", "letter", "a"]
    assert tokenize_batch(["the letter a.", "Two ends"])[0] == ["the", "letter", "a."]
    assert tokenize("") == []
    assert tokenize(" . ! ? ") == []
    assert tokenize("what?!") == ["what", "?!"]  # only single marks are dropped


# ------------------------------------------------------------------ scores


def coco_scores(gts: dict, res: dict) -> tuple[dict, dict]:
    """pycocoevalcap's Bleu(4), Rouge, Cider on tokenized strings, as COCOEvalCap calls them."""
    out, per = {}, {k: {} for k in gts}
    for scorer, names in ((Bleu(4), [f"Bleu_{k}" for k in range(1, 5)]), (Rouge(), ["ROUGE_L"])):
        value, values = (
            scorer.compute_score(gts, res, verbose=0)
            if isinstance(scorer, Bleu)
            else scorer.compute_score(gts, res)
        )
        if names == ["ROUGE_L"]:
            value, values = [value], [values]
        for name, v, vs in zip(names, value, values, strict=True):
            out[name] = v
            for k, x in zip(gts, vs, strict=True):
                per[k][name] = x
    # pycocoevalcap's Cider fails (max of nothing) when no reference has a word
    if any(r.split() for refs in gts.values() for r in refs):
        value, values = Cider().compute_score(gts, res)
        out["CIDEr"] = value
        for k, x in zip(gts, values, strict=True):
            per[k]["CIDEr"] = x
    return out, per


def assert_same(references: dict, candidates: dict, gts: dict, res: dict) -> None:
    """Our score/per_image_scores equal pycocoevalcap's on its own tokenization."""
    want, want_per = coco_scores(gts, res)
    got = score(references, candidates, meteor=False)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    got_per = per_image_scores(references, candidates)
    for k in candidates:
        for name in ("Bleu_4", "ROUGE_L", "CIDEr"):
            if name in want_per[k]:
                assert got_per[k][name] == pytest.approx(want_per[k][name], abs=1e-6), (k, name)


def ours_tokenized(references: dict, candidates: dict) -> tuple[dict, dict]:
    gts = {k: [" ".join(tokenize(r)) for r in v] for k, v in references.items()}
    return gts, {k: [" ".join(tokenize(candidates[k]))] for k in references}


EDGE_REFS = {
    1: ["A dog runs on the grass.", "A brown dog running.", "Dog on grass"],
    "img-2": ["Two cats sleep on a red sofa."],
    3: [
        "a man rides a bike",
        "a person on a bicycle",
        "a man riding a bike down a street",
        "someone cycling",
        "A MAN ON A BIKE.",
    ],
    "four": ["A plate of food.", "Food on a white plate, with a fork."],
    5: [
        "Children play football in a park.",
        "kids playing soccer",
        "a ball game in a park",
        "some children run after a ball",
    ],
    6: ["a red bus", "the red bus is parked", "a bus"],
}
EDGE_CANDS = {
    1: "",  # empty candidate
    "img-2": "a cat a cat a cat a cat on a sofa",  # repeated words
    3: "... !!! , ;",  # punctuation only
    "four": "A PLATE OF FOOD WITH A FORK.",  # case differences
    5: "children playing football in the park .",
    6: "a red bus",
}


@needs_ptb
def test_score_equals_cocoevalcap_on_edge_cases() -> None:
    """Through pycocoevalcap's Java tokenizer, as COCOEvalCap does; ids mix int and str."""
    tok = ptb.PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in EDGE_REFS.items()})
    res = tok.tokenize({k: [{"caption": EDGE_CANDS[k]}] for k in EDGE_REFS})
    assert_same(EDGE_REFS, EDGE_CANDS, gts, res)


@pytest.mark.parametrize("k", list(EDGE_REFS))
def test_single_image(k: object) -> None:
    refs, cands = {k: EDGE_REFS[k]}, {k: EDGE_CANDS[k]}
    assert_same(refs, cands, *ours_tokenized(refs, cands))
    assert score(refs, cands, meteor=False)["CIDEr"] == 0.0  # idf is log(1/1) = 0 everywhere


_VOCAB = str.split("a the man woman dog cat on in with red blue sits runs ball grass field of two")


def _random_set(seed: int, n: int) -> tuple[dict, dict]:
    rng = random.Random(seed)

    def sent() -> str:
        return " ".join(rng.choice(_VOCAB) for _ in range(rng.randint(0, 14)))

    refs = {i: [sent() for _ in range(rng.randint(1, 5))] for i in range(n)}
    return refs, {i: sent() for i in refs}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_images_equal_pycocoevalcap(seed: int) -> None:
    refs, cands = _random_set(seed, 400)
    assert_same(refs, cands, *ours_tokenized(refs, cands))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.lists(st.sampled_from(_VOCAB[:6]), max_size=9), min_size=1, max_size=5),
            st.lists(st.sampled_from(_VOCAB[:6]), max_size=9),
        ),
        min_size=2,
        max_size=12,
    )
)
def test_scores_equal_pycocoevalcap_property(images: list) -> None:
    refs = {f"id{i}": [" ".join(r) for r in rs] for i, (rs, _) in enumerate(images)}
    cands = {f"id{i}": " ".join(c) for i, (_, c) in enumerate(images)}
    assert_same(refs, cands, *ours_tokenized(refs, cands))


def test_perfect_and_hand_computed_scores() -> None:
    refs = {0: ["a b c d e"], 1: ["x y z w v"]}
    perfect = score(refs, {0: "a b c d e", 1: "x y z w v"}, meteor=False)
    for k in range(1, 5):
        assert perfect[f"Bleu_{k}"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ROUGE_L"] == pytest.approx(1.0)
    # candidate "a b" for "a b c d e": P = 1, R = 2/5, F = (1 + 1.44) R P / (R + 1.44 P)
    half = per_image_scores({0: ["a b c d e"]}, {0: "a b"})[0]
    assert half["ROUGE_L"] == pytest.approx(2.44 * 0.4 / (0.4 + 1.44))


def test_bad_ids_raise() -> None:
    with pytest.raises(ValueError, match="same ids"):
        score({1: ["a"]}, {2: "a"}, meteor=False)
    with pytest.raises(ValueError, match="non-empty"):
        score({1: []}, {1: "a"}, meteor=False)


def test_nist_equals_nltk_on_tokens() -> None:
    from nltk.translate.nist_score import corpus_nist

    refs, cands = _random_set(3, 50)
    got = score(refs, cands, meteor=False, nist=True)
    gts, res = ours_tokenized(refs, cands)
    for n in (2, 4):
        want = corpus_nist(
            [[r.split() for r in gts[k]] for k in refs], [res[k][0].split() for k in refs], n=n
        )
        assert got[f"NIST_{n}"] == pytest.approx(want)


def test_meteor_missing_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cm.shutil, "which", lambda _name: None)
    monkeypatch.setattr(cm, "_meteor_warned", False)
    refs, cands = {0: ["a dog"]}, {0: "a dog"}
    with pytest.warns(RuntimeWarning, match="METEOR left out"):
        first = score(refs, cands)
    assert "METEOR" not in first
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "METEOR" not in score(refs, cands)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_JAVA, reason="needs java")
def test_meteor_equals_pycocoevalcap() -> None:
    from pycocoevalcap.meteor.meteor import Meteor

    refs, cands = _random_set(4, 30)
    got = score(refs, cands, meteor=True)
    want, _ = Meteor().compute_score(*ours_tokenized(refs, cands))
    assert got["METEOR"] == pytest.approx(want, abs=1e-6)


def test_perplexity() -> None:
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(10 * math.log(4.0), 10) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_blind_baseline_chooses_on_training_data_only() -> None:
    from pixtell.metrics.caption import blind_baseline

    train = {i: ["a red circle on a plain background", "a red circle"] for i in range(20)}
    test_same = {i: ["a red circle on a plain background"] for i in range(5)}
    test_other = {i: ["two blue squares next to a green star"] for i in range(5)}
    assert blind_baseline(train, test_same) == pytest.approx(
        score(test_same, dict.fromkeys(test_same, "a red circle on a plain background"))["Bleu_4"]
    )
    # the test references never steer the choice: a blind caption cannot match other scenes
    assert blind_baseline(train, test_other) < 0.01


def test_nist_of_only_empty_candidates_is_zero() -> None:
    refs = {1: ["a red circle"], 2: ["a blue square"]}
    out = score(refs, {1: "", 2: ""}, meteor=False, nist=True)
    assert out["NIST_2"] == 0.0 and out["NIST_4"] == 0.0 and out["Bleu_4"] == pytest.approx(0.0)
