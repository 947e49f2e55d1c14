"""Decoding: batched beam search == the one-image reference, greedy == beam 1, hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pixtell.caption.decoding import (
    _plain_banned,
    beam_search,
    beam_search_single,
    greedy,
    no_repeat_ngram_mask,
)
from pixtell.models import create
from pixtell.models.captioning import ShowTell

V = 9
END = 2


def random_model(kind: str, seed: int) -> nn.Module:
    """A tiny random float64 model whose captions are a few words long (not empty at once)."""
    torch.manual_seed(seed)
    kw = dict(embed_dim=8, hidden_dim=16, dropout=0.0, encoder_kwargs={"width": 4})
    if kind == "show_tell":
        net = create("show_tell", "caption", num_classes=V, **kw)
    else:
        net = create(
            "show_attend_tell", "caption", num_classes=V, attention=kind, attention_dim=8, **kw
        )
    with torch.no_grad():
        net.fc.weight.mul_(8.0)  # peaky distributions: real choices between beams
        net.fc.bias[END] -= 1.5
    return net.double().eval()


def feats_for(net: nn.Module, n: int, seed: int) -> torch.Tensor:
    """Random encoder features: (n, C) for Show and Tell, a 4×4 map for attention."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, net.feature_dim) if isinstance(net, ShowTell) else (n, net.feature_dim, 4, 4)
    return torch.randn(*shape, generator=g, dtype=torch.float64).relu()


@pytest.mark.parametrize("kind", ["show_tell", "soft", "hard"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_beam_equals_single_image_beam(kind: str, seed: int) -> None:
    net = random_model(kind, seed)
    feats = feats_for(net, 4, seed)
    lengths = set()
    for beam in (1, 3, 5):
        for ngram in (0, 2):
            kw = dict(beam_size=beam, max_len=8, no_repeat_ngram=ngram, length_penalty=0.7)
            kw.update(n_best=min(beam, 2), return_alphas=True)
            batched, single = beam_search(net, feats, **kw), beam_search_single(net, feats, **kw)
            for got, want in zip(batched, single, strict=True):
                assert [h.tokens for h in got] == [h.tokens for h in want]
                assert [h.finished for h in got] == [h.finished for h in want]
                # same arithmetic on batches of other sizes: equal to the last bits of float64
                for g, w in zip(got, want, strict=True):
                    assert g.score == pytest.approx(w.score, rel=1e-12, abs=1e-12)
                    assert g.logprob == pytest.approx(w.logprob, rel=1e-12, abs=1e-12)
                    if kind == "show_tell":
                        assert g.alphas is None and w.alphas is None
                    else:
                        assert g.alphas.shape == (len(g.tokens), 16)
                        torch.testing.assert_close(g.alphas, w.alphas, rtol=1e-10, atol=1e-12)
                lengths.update(len(h.tokens) for h in got)
    assert max(lengths) >= 3  # the comparison covered real multi-word captions


@pytest.mark.parametrize("kind", ["show_tell", "soft", "hard"])
@pytest.mark.parametrize("ngram", [0, 1, 3])
def test_greedy_equals_beam_one(kind: str, ngram: int) -> None:
    net = random_model(kind, 7)
    feats = feats_for(net, 6, 7)
    g = greedy(net, feats, 12, no_repeat_ngram=ngram, length_penalty=0.5, return_alphas=True)
    b = beam_search(net, feats, beam_size=1, max_len=12, no_repeat_ngram=ngram, length_penalty=0.5)
    assert [h.tokens for h in g] == [h[0].tokens for h in b]
    for x, y in zip(g, b, strict=True):
        assert x.score == pytest.approx(y[0].score, rel=1e-12)
        assert x.finished == y[0].finished


def test_decoded_captions_never_repeat_an_ngram() -> None:
    net = random_model("soft", 3)
    feats = feats_for(net, 6, 3)
    for n in (1, 2):
        for hyps in beam_search(net, feats, beam_size=4, max_len=12, no_repeat_ngram=n, n_best=4):
            for h in hyps:
                grams = [tuple(h.tokens[i : i + n]) for i in range(len(h.tokens) - n + 1)]
                assert len(grams) == len(set(grams))
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 5), min_size=6, max_size=6), min_size=1, max_size=4),
    st.integers(1, 4),
)
def test_ngram_mask_matches_plain_loop(rows: list[list[int]], n: int) -> None:
    mask = no_repeat_ngram_mask(torch.tensor(rows), n, 6)
    for row, m in zip(rows, mask, strict=True):
        assert set(torch.nonzero(m).flatten().tolist()) == _plain_banned(row, n)


class Markov(nn.Module):
    """A hand-made 'model': the next-word distribution depends only on the last word."""

    # ids: 0 pad, 1 start, 2 end, 3 A, 4 B
    TABLE = {
        1: {3: 0.6, 4: 0.4},  # start → A (0.6) or B (0.4)
        3: {2: 0.4, 3: 0.3, 4: 0.3},  # after A: end 0.4
        4: {2: 0.9, 3: 0.05, 4: 0.05},  # after B: end 0.9
    }

    def prepare(self, feats: torch.Tensor) -> tuple[torch.Tensor]:
        return (feats,)

    def init_state(self, memory: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        return (torch.zeros(memory[0].shape[0]),)

    def step(self, tokens, state, memory):  # noqa: ANN001, ANN201
        out = torch.full((len(tokens), 5), -1e9, dtype=torch.float64)
        for i, tok in enumerate(tokens.tolist()):
            for nxt, p in self.TABLE[tok].items():
                out[i, nxt] = math.log(p)
        return out, state, None


def test_beam_search_finds_what_greedy_misses_hand_computed() -> None:
    feats = torch.zeros(2, 1)
    g = greedy(Markov(), feats, 5)
    assert g[0].tokens == [3] and g[0].logprob == pytest.approx(math.log(0.6 * 0.4))
    for search in (beam_search, beam_search_single):
        best = search(Markov(), feats, beam_size=2, max_len=5, n_best=2)
        assert [h.tokens for h in best[0]] == [[4], [3]]  # B end: 0.36 > A end: 0.24
        assert best[1][0].logprob == pytest.approx(math.log(0.4 * 0.9))
        assert best[0][1].logprob == pytest.approx(math.log(0.24))
        assert all(h.finished for h in best[0])


def test_length_penalty_and_max_len_hand_computed() -> None:
    feats = torch.zeros(1, 1)
    # max_len 1: nothing can finish; the live beams are kept unfinished, best first
    cut = beam_search(Markov(), feats, beam_size=2, max_len=1, n_best=2)[0]
    assert [h.tokens for h in cut] == [[3], [4]] and not any(h.finished for h in cut)
    # alpha = 1 divides by the length (words + <end>): log(0.36)/2 beats log(0.24)/2
    best = beam_search(Markov(), feats, beam_size=2, max_len=5, length_penalty=1.0)[0][0]
    assert best.tokens == [4] and best.score == pytest.approx(math.log(0.36) / 2)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(Markov(), feats, beam_size=2, n_best=3)
