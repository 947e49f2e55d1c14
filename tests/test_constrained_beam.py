"""Constrained beam search: every caption holds its forced phrase, no constraint == beam search,
batched == one image at a time, max_len and no_repeat_ngram respected, exhaustive optimum."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from pixtell.caption.decoding import (
    Hypothesis,
    _compile_constraints,
    beam_search,
    constrained_beam_search,
)
from pixtell.caption.predict import Captioner
from pixtell.caption.vocab import Vocabulary
from pixtell.models import create
from pixtell.models.captioning import ShowTell

V = 9
END = 2
WORDS = list(range(3, V))  # ids 0 pad, 1 start, 2 end; 3.. are words (3 is <unk>)
KINDS = ["show_tell", "soft", "hard"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: one thread is many times faster on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_model(kind: str, seed: int, vocab: int = V, end_bias: float = -1.5) -> nn.Module:
    """A tiny random float64 model with peaky next-word distributions."""
    torch.manual_seed(seed)
    kw = dict(embed_dim=8, hidden_dim=16, dropout=0.0, encoder_kwargs={"width": 4})
    if kind == "show_tell":
        net = create("show_tell", "caption", num_classes=vocab, **kw)
    else:
        net = create(
            "show_attend_tell", "caption", num_classes=vocab, attention=kind, attention_dim=8, **kw
        )
    with torch.no_grad():
        net.fc.weight.mul_(8.0)
        net.fc.bias[END] += end_bias
    return net.double().eval()


def feats_for(net: nn.Module, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, net.feature_dim) if isinstance(net, ShowTell) else (n, net.feature_dim, 4, 4)
    return torch.randn(*shape, generator=g, dtype=torch.float64).relu()


def contains(tokens: list[int], phrase: list[int]) -> bool:
    n = len(phrase)
    return any(tokens[i : i + n] == list(phrase) for i in range(len(tokens) - n + 1))


def random_constraints(rng: random.Random, n: int) -> list[list[list[int]]]:
    """Per image: nothing, one word, a two-word phrase, or alternatives of both kinds."""
    out = []
    for _ in range(n):
        kind = rng.choice(["none", "word", "phrase", "alternatives"])
        if kind == "none":
            out.append([])
        elif kind == "word":
            out.append([[rng.choice(WORDS)]])
        elif kind == "phrase":
            out.append([rng.choices(WORDS, k=2)])
        else:
            out.append([[rng.choice(WORDS)], rng.choices(WORDS, k=2), rng.choices(WORDS, k=3)])
    return out


def same(got: list[list[Hypothesis]], want: list[list[Hypothesis]], exact: bool = True) -> None:
    """Equal hypotheses; ``exact=False``: scores to float64's last bits (other batch sizes)."""
    tol = dict(rel=0, abs=0) if exact else dict(rel=1e-12, abs=1e-12)
    assert len(got) == len(want)
    for g_hyps, w_hyps in zip(got, want, strict=True):
        assert [h.tokens for h in g_hyps] == [h.tokens for h in w_hyps]
        for g, w in zip(g_hyps, w_hyps, strict=True):
            assert g.finished == w.finished
            assert g.logprob == pytest.approx(w.logprob, **tol)
            assert g.score == pytest.approx(w.score, **tol)
            if w.alphas is None:
                assert g.alphas is None
            else:
                torch.testing.assert_close(g.alphas, w.alphas, rtol=tol["rel"], atol=tol["abs"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_constraint_is_plain_beam_search(kind: str, seed: int) -> None:
    net = random_model(kind, seed, end_bias=0.5 * seed - 1.0)
    feats = feats_for(net, 4, seed)
    finished = set()
    for beam, ngram, n_best in [(1, 0, 1), (3, 2, 2), (5, 0, 5), (4, 1, 3)]:
        kw = dict(beam_size=beam, max_len=8, no_repeat_ngram=ngram, length_penalty=0.7)
        kw.update(n_best=n_best, return_alphas=True)
        want = beam_search(net, feats, **kw)
        same(constrained_beam_search(net, feats, [[] for _ in range(4)], **kw), want)
        # unconstrained images of a batch with constrained ones are still plain beam search
        mixed = constrained_beam_search(net, feats, [[[5]], [], [[6, 7]], []], **kw)
        same([mixed[1], mixed[3]], [want[1], want[3]])
        finished.update(h.finished for hyps in want for h in hyps)
    assert finished == {True, False}  # both ways of ending were compared


@pytest.mark.parametrize("kind", KINDS)
def test_every_caption_contains_its_constraint(kind: str) -> None:
    net = random_model(kind, 11)
    rng = random.Random(kind)
    forced_in = 0
    for trial in range(6):
        feats = feats_for(net, 5, trial)
        cons = random_constraints(rng, 5)
        beam, max_len = rng.choice([1, 3, 5]), rng.choice([3, 6, 10])
        got = constrained_beam_search(
            net, feats, cons, beam_size=beam, max_len=max_len, n_best=beam, length_penalty=0.5
        )
        plain = beam_search(net, feats, beam_size=beam, max_len=max_len, n_best=1)
        for alts, hyps, p in zip(cons, got, plain, strict=True):
            assert hyps, "every image gets a caption"
            for h in hyps:
                assert len(h.tokens) <= max_len
                assert not alts or any(contains(h.tokens, a) for a in alts), (alts, h.tokens)
                assert END not in h.tokens and 0 not in h.tokens and 1 not in h.tokens
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
            forced_in += bool(alts) and not any(contains(p[0].tokens, a) for a in alts)
    assert forced_in >= 3  # the plain captions often lacked the phrase: the search forced it


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3), max_size=3),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 4),
    st.sampled_from([0, 1, 2]),
)
def test_batched_equals_one_image_at_a_time(
    cons: list[list[list[int]]], beam: int, ngram: int
) -> None:
    net = random_model("soft", 5)
    feats = feats_for(net, len(cons), 5)
    kw = dict(beam_size=beam, max_len=6, no_repeat_ngram=ngram, n_best=beam, return_alphas=True)
    batched = constrained_beam_search(net, feats, cons, **kw)
    for i, alts in enumerate(cons):
        alone = constrained_beam_search(net, feats[i : i + 1], [alts], **kw)
        same([batched[i]], alone, exact=False)
        for h in batched[i]:
            assert not alts or any(contains(h.tokens, a) for a in alts)


def test_max_len_is_respected_and_forces_the_phrase_in_time() -> None:
    # <end> very likely: left alone the model stops at once; max_len just fits the phrase
    net = random_model("soft", 3, end_bias=6.0)
    feats = feats_for(net, 2, 3)
    assert all(h[0].tokens == [] for h in beam_search(net, feats, beam_size=3, max_len=5))
    cons = [[[4, 5, 6]], [[7], [8, 8], [5, 3, 5, 3, 5]]]  # the 5 words never fit: dropped
    got = constrained_beam_search(net, feats, cons, beam_size=3, max_len=3, n_best=3)
    assert [h.tokens for h in got[0]] == [[4, 5, 6]] and not got[0][0].finished
    assert len(got[1]) == 3 and got[1][0].finished and len(got[1][0].tokens) <= 2
    for h in got[1]:
        assert len(h.tokens) <= 3 and (contains(h.tokens, [7]) or contains(h.tokens, [8, 8]))
    with pytest.raises(ValueError, match="longer than max_len"):
        constrained_beam_search(net, feats[:1], [[[5, 3, 5, 3, 5]]], beam_size=3, max_len=3)
    with pytest.raises(ValueError, match="can never be generated"):
        constrained_beam_search(net, feats[:1], [[[4, END]]], beam_size=3)
    with pytest.raises(ValueError, match="constraint lists"):
        constrained_beam_search(net, feats, [[[4]]], beam_size=3)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.integers(3, 5), min_size=1, max_size=3), min_size=1, max_size=3),
    st.lists(st.integers(3, 6), max_size=7),
)
def test_automaton_tracks_containment_and_words_needed(
    alts: list[list[int]], text: list[int]
) -> None:
    auto = _compile_constraints([alts], 8, [0, 1, 2], 20, torch.device("cpu"))
    state = int(auto.root[0])
    for i, tok in enumerate(text):
        state = int(auto.table[state, auto.col[tok]])
        seen = text[: i + 1]
        assert (state == 0) == any(contains(seen, a) for a in alts)
        # words needed: the shortest continuation (over words 3..6) that contains a phrase
        need = next(
            n
            for n in range(4)
            if any(
                any(contains(seen + list(more), a) for a in alts)
                for more in itertools.product(range(3, 7), repeat=n)
            )
        )
        assert int(auto.need[state]) == need


def occurrences(tokens: list[int], phrase: list[int]) -> list[int]:
    n = len(phrase)
    return [i for i in range(len(tokens) - n + 1) if tokens[i : i + n] == phrase]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("ngram", "phrase"), [(1, [4, 4]), (1, [6, 6]), (1, [3, 5, 3]), (2, [5, 6, 5]), (2, [7, 7, 7])]
)
def test_phrase_banned_by_no_repeat_ngram_is_placed_once(
    kind: str, ngram: int, phrase: list[int]
) -> None:
    net = random_model(kind, 4)
    feats = feats_for(net, 6, 4)
    got = constrained_beam_search(
        net, feats, [[phrase]] * 6, beam_size=4, max_len=9, no_repeat_ngram=ngram, n_best=4
    )
    plain = beam_search(net, feats, beam_size=4, max_len=9, no_repeat_ngram=ngram)
    assert not any(contains(h[0].tokens, phrase) for h in plain)  # the ban alone forbids it
    for hyps in got:
        assert hyps
        for h in hyps:
            (at,) = occurrences(h.tokens, phrase)  # placed exactly once
            seen: set[tuple[int, ...]] = set()
            for i in range(len(h.tokens) - ngram + 1):
                gram = tuple(h.tokens[i : i + ngram])
                # an n-gram repeats only where it ends on a word of the phrase
                assert gram not in seen or at <= i + ngram - 1 < at + len(phrase), h.tokens
                seen.add(gram)


def test_extra_processors_apply_as_in_beam_search() -> None:
    net = random_model("soft", 6)
    feats = feats_for(net, 4, 6)

    def ban_five(history: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        logprobs[:, 5] = float("-inf")
        return logprobs

    kw = dict(beam_size=3, max_len=7, n_best=3, processors=[ban_five])
    same(constrained_beam_search(net, feats, [[]] * 4, **kw), beam_search(net, feats, **kw))
    for hyps in constrained_beam_search(net, feats, [[[6]], [[7, 8]], [[5], [8]], []], **kw):
        assert hyps and all(5 not in h.tokens for h in hyps)


def best_by_enumeration(
    net: nn.Module, feats: torch.Tensor, alts: list[list[int]], max_len: int, alpha: float
) -> tuple[list[int], float]:
    """The highest-scoring caption holding one of ``alts``, over every caption up to max_len."""
    memory = net.prepare(feats)
    seqs = [
        list(s) + ([END] if n < max_len else [])
        for n in range(1, max_len + 1)
        for s in itertools.product(WORDS, repeat=n)
        if any(contains(list(s), a) for a in alts)
    ]
    best: tuple[float, list[int]] = (-math.inf, [])
    for seq in seqs:
        state, lp, tok = net.init_state(memory), 0.0, torch.tensor([1])
        for nxt in seq:
            logprobs, state, _ = net.step(tok, state, memory)
            lp += float(logprobs[0, nxt].detach())
            tok = torch.tensor([nxt])
        score = lp / len(seq) ** alpha
        if score > best[0]:
            best = (score, seq[:-1] if seq[-1] == END else seq)
    return best[1], best[0]


@pytest.mark.parametrize("kind", ["show_tell", "soft"])
@pytest.mark.parametrize("alts", [[[5]], [[6, 4]], [[7], [3, 8]]])
def test_wide_beam_finds_the_enumerated_optimum(kind: str, alts: list[list[int]]) -> None:
    net = random_model(kind, 8, end_bias=0.0)
    for i in range(2):
        feats = feats_for(net, 2, 8)[i : i + 1]
        want, score = best_by_enumeration(net, feats, alts, 3, 0.5)
        got = constrained_beam_search(
            net, feats, [alts], beam_size=300, max_len=3, length_penalty=0.5
        )[0][0]
        assert got.tokens == want and got.score == pytest.approx(score, rel=1e-9)


class Markov(nn.Module):
    """Next-word probabilities that depend on the last word only (ids: 2 end, 3 A, 4 B)."""

    TABLE = {1: {3: 0.6, 4: 0.4}, 3: {2: 0.4, 3: 0.3, 4: 0.3}, 4: {2: 0.9, 3: 0.05, 4: 0.05}}

    def prepare(self, feats: torch.Tensor) -> tuple[torch.Tensor]:
        return (feats,)

    def init_state(self, memory: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        return (torch.zeros(memory[0].shape[0]),)

    def step(self, tokens, state, memory):  # noqa: ANN001, ANN201
        out = torch.full((len(tokens), 5), -1e9, dtype=torch.float64)
        for i, tok in enumerate(tokens.tolist()):  # a dead beam's word: anything
            for nxt, p in self.TABLE.get(tok, {2: 1.0}).items():
                out[i, nxt] = math.log(p)
        return out, state, None


def test_hand_computed_markov() -> None:
    feats = torch.zeros(3, 1)
    # a beam of 64 keeps every path of up to 5 words: the results are the exact optima.
    # Unconstrained "B end" (0.4·0.9) beats "A end" (0.6·0.4) and it holds B already;
    # forcing "A B": 0.6·0.3·0.9; forcing "B A": "B A end" 0.4·0.05·0.4, then "B A B end"
    got = constrained_beam_search(
        Markov(), feats, [[[4]], [[3, 4]], [[4, 3]]], beam_size=64, max_len=5, n_best=2
    )
    assert got[0][0].tokens == [4] and got[0][0].logprob == pytest.approx(math.log(0.36))
    assert got[1][0].tokens == [3, 4] and got[1][0].logprob == pytest.approx(math.log(0.162))
    assert [h.tokens for h in got[2]] == [[4, 3], [4, 3, 4]]
    assert [h.logprob for h in got[2]] == pytest.approx([math.log(0.008), math.log(0.0054)])
    # max_len 2 leaves no room to end: "B A" is cut, 0.4·0.05
    cut = constrained_beam_search(Markov(), feats[:1], [[[4, 3]]], beam_size=2, max_len=2)[0][0]
    assert cut.tokens == [4, 3] and not cut.finished
    assert cut.logprob == pytest.approx(math.log(0.02))


def tiny_captioner() -> Captioner:
    words = ["a", "red", "blue", "circle", "square", "traffic", "light", "on", "left"]
    vocab = Vocabulary(words)
    torch.manual_seed(0)
    net = create(
        "show_attend_tell",
        "caption",
        num_classes=len(vocab),
        embed_dim=8,
        hidden_dim=16,
        attention_dim=8,
        dropout=0.0,
        encoder_kwargs={"width": 4},
    )
    meta = {"arch": "show_attend_tell", "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    return Captioner(net, vocab, meta | {"max_len": 8}, "cpu")


def test_captioner_constraint_ids_and_decode(tmp_path) -> None:  # noqa: ANN001
    cap = tiny_captioner()
    with pytest.warns(RuntimeWarning) as caught:
        ids = cap.constraint_ids(["Traffic light", "purple square", "circle", "  ", "<unk>"])
    assert [str(w.message) for w in caught][:2] == [
        "constraint 'purple square' dropped: unknown words ['purple']",
        "constraint '  ' dropped: no words",
    ]
    assert len(caught) == 3 and "'<unk>' dropped" in str(caught[2].message)
    s = cap.vocab.stoi
    assert ids == [[s["traffic"], s["light"]], [s["circle"]]]
    paths = []
    for i, colour in enumerate(["red", "blue", "green"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 40), colour).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths.insert(1, tmp_path / "broken.png")
    cons = [ids, [[0]], [], [[s["left"]]]]  # the unreadable image's constraint is never used
    got = dict(cap.iter_decoded(paths, beam_size=3, batch_size=2, constraints=cons))
    plain = dict(cap.iter_decoded(paths, beam_size=3, batch_size=2))
    assert isinstance(got[1], str) and got[1] == plain[1]
    assert any(contains(got[0].hypothesis.tokens, a) for a in ids)
    assert got[2].hypothesis.tokens == plain[2].hypothesis.tokens  # no constraint
    assert "left" in cap.vocab.decode(got[3].hypothesis.tokens).split()
    feats = cap.encode(torch.stack([cap.load(paths[0]), cap.load(paths[2])]))
    one = cap.decode(feats, beam_size=1, constraints=[[[s["square"]]], []], return_alphas=True)
    assert s["square"] in one[0].hypothesis.tokens
    assert one[0].hypothesis.alphas.shape[0] == len(one[0].hypothesis.tokens)
    assert one[1].hypothesis.tokens == cap.decode(feats[1:], beam_size=1)[0].hypothesis.tokens
    with pytest.raises(ValueError, match="constraint lists"):
        list(cap.iter_decoded(paths, constraints=cons[:2]))
