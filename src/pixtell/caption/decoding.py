"""Caption decoding: greedy, batched beam search and its one-image reference.

All three drive a model through ``prepare`` / ``init_state`` / ``step`` (see
:mod:`pixtell.models.captioning`) and return :class:`Hypothesis` objects. Call them on a
model in ``eval()`` mode.

Beam search (the Show, Attend and Tell variant): each image starts with one live beam; at
every step all live beams are expanded over the vocabulary and the best ``k`` candidates
by summed log-probability are kept, where ``k`` is ``beam_size`` minus the hypotheses
already finished; a candidate ending in ``<end>`` is finished. Decoding stops when no beam
is live, or after ``max_len`` words, when the live beams are kept unfinished. Finished
hypotheses are ranked by ``logprob / length ** length_penalty`` (length counts ``<end>``).

The batched :func:`beam_search` runs every image and beam as one ``(B·K)`` batch: one
``step`` call per time step, with dead beam slots held at −inf. Token bans are
"processors" ``(history (N, t), logprobs (N, V)) -> logprobs`` applied before selection,
so other constraints (e.g. forcing a word) can plug in beside the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PAD, START, END = 0, 1, 2


@dataclass
class Hypothesis:
    """One decoded caption: word ids without ``<start>``/``<end>`` and its scores."""

    tokens: list[int]
    logprob: float  # summed log-probability of the generated words (and of <end>)
    score: float  # logprob / length ** length_penalty, the ranking score
    finished: bool  # ended with <end> (False: cut at max_len)
    alphas: torch.Tensor | None = None  # (len(tokens), P) attention per word, if asked


def no_repeat_ngram_mask(history: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(N, V) bool: the next tokens that would repeat an n-gram already in ``history``."""
    N, t = history.shape
    mask = torch.zeros(N, vocab_size, dtype=torch.bool, device=history.device)
    if n <= 0 or t < n:
        return mask
    windows = history.unfold(1, n, 1)  # (N, t - n + 1, n)
    prefix = history[:, t - n + 1 :]  # the last n - 1 tokens (empty for n = 1)
    hit = (windows[..., :-1] == prefix[:, None]).all(dim=-1)
    rows = torch.arange(N, device=history.device)[:, None].expand_as(hit)
    mask[rows[hit], windows[..., -1][hit]] = True
    return mask


def _processors(no_repeat_ngram: int, forbid: Sequence[int], extra: Sequence[Processor]) -> list:
    """The built-in bans (special tokens never generated, no repeated n-gram) + ``extra``."""

    def ban_special(history: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        logprobs[:, list(forbid)] = float("-inf")
        return logprobs

    def ban_ngrams(history: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        mask = no_repeat_ngram_mask(history, no_repeat_ngram, logprobs.shape[1])
        return logprobs.masked_fill(mask, float("-inf"))

    return [ban_special] + ([ban_ngrams] if no_repeat_ngram > 0 else []) + list(extra)


def _normalise(logprob: float, length: int, alpha: float) -> float:
    return logprob / max(length, 1) ** alpha


@torch.no_grad()
def greedy(
    model: nn.Module,
    feats: torch.Tensor,
    max_len: int = 20,
    *,
    length_penalty: float = 0.0,
    no_repeat_ngram: int = 0,
    return_alphas: bool = False,
    start: int = START,
    end: int = END,
    forbid: Sequence[int] = (PAD, START),
    processors: Sequence[Processor] = (),
) -> list[Hypothesis]:
    """The most probable word at every step, for the whole batch at once."""
    B = feats.shape[0]
    memory = model.prepare(feats)
    state = model.init_state(memory)
    procs = _processors(no_repeat_ngram, forbid, processors)
    tokens = torch.full((B,), start, dtype=torch.long, device=feats.device)
    history = tokens.new_empty(B, 0)
    total: torch.Tensor | None = None
    alphas: list[torch.Tensor] = []
    out: list[Hypothesis | None] = [None] * B
    for t in range(max_len):
        logprobs, state, alpha = model.step(tokens, state, memory)
        logprobs = logprobs.clone()
        for proc in procs:
            logprobs = proc(history, logprobs)
        best, tokens = logprobs.max(dim=1)
        total = best if total is None else total + best
        history = torch.cat([history, tokens[:, None]], dim=1)
        if return_alphas and alpha is not None:
            alphas.append(alpha)
        for i in range(B):
            if out[i] is None and (tokens[i] == end or t == max_len - 1):
                fin = bool(tokens[i] == end)
                words = history[i, : t + (0 if fin else 1)].tolist()
                lp = float(total[i])
                att = torch.stack(alphas, dim=1)[i, : len(words)] if alphas else None
                out[i] = Hypothesis(words, lp, _normalise(lp, t + 1, length_penalty), fin, att)
        if all(h is not None for h in out):
            break
    return out  # type: ignore[return-value]


@torch.no_grad()
def beam_search(
    model: nn.Module,
    feats: torch.Tensor,
    *,
    beam_size: int = 5,
    max_len: int = 20,
    length_penalty: float = 0.0,
    no_repeat_ngram: int = 0,
    return_alphas: bool = False,
    n_best: int = 1,
    start: int = START,
    end: int = END,
    forbid: Sequence[int] = (PAD, START),
    processors: Sequence[Processor] = (),
) -> list[list[Hypothesis]]:
    """Beam search over a batch of images: the ``n_best`` hypotheses of each, best first."""
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), not {n_best}")
    B, K, dev = feats.shape[0], beam_size, feats.device
    memory = tuple(m.repeat_interleave(K, dim=0) for m in model.prepare(feats))
    state = model.init_state(memory)
    procs = _processors(no_repeat_ngram, forbid, processors)
    tokens = torch.full((B * K,), start, dtype=torch.long, device=dev)
    history = tokens.new_empty(B * K, 0)
    alpha_hist: torch.Tensor | None = None
    beam_lp: torch.Tensor | None = None
    n_done = torch.zeros(B, dtype=torch.long, device=dev)
    rank = torch.arange(K, device=dev)
    base = torch.arange(B, device=dev)[:, None] * K
    image = list(range(B))  # active slot -> image: finished images leave the batch
    done: list[list[Hypothesis]] = [[] for _ in range(B)]
    for t in range(max_len):
        logprobs, state, alpha = model.step(tokens, state, memory)
        logprobs = logprobs.clone()
        for proc in procs:
            logprobs = proc(history, logprobs)
        if beam_lp is None:  # one live beam per image to start with
            beam_lp = logprobs.new_full((B, K), float("-inf"))
            beam_lp[:, 0] = 0.0
        V = logprobs.shape[1]
        cand = (beam_lp.reshape(-1, 1) + logprobs).view(-1, K * V)
        top_lp, top_idx = cand.topk(K, dim=1)
        src = (base + torch.div(top_idx, V, rounding_mode="floor")).view(-1)
        new_tok = top_idx % V
        valid = (rank[None] < (K - n_done)[:, None]) & torch.isfinite(top_lp)
        ends = valid & (new_tok == end)
        close = ends | valid if t == max_len - 1 else ends
        history = torch.cat([history[src], new_tok.view(-1, 1)], dim=1)
        if return_alphas and alpha is not None:
            step_alpha = alpha[src][:, None]
            alpha_hist = (
                step_alpha
                if alpha_hist is None
                else torch.cat([alpha_hist[src], step_alpha], dim=1)
            )
        for b, r in close.nonzero().tolist():
            row, fin = b * K + r, bool(ends[b, r])
            words = history[row, : t + (0 if fin else 1)].tolist()
            lp = float(top_lp[b, r])
            att = alpha_hist[row, : len(words)] if alpha_hist is not None else None
            done[image[b]].append(
                Hypothesis(words, lp, _normalise(lp, t + 1, length_penalty), fin, att)
            )
        live = valid & ~ends
        if not live.any():
            break
        beam_lp = top_lp.masked_fill(~live, float("-inf"))
        n_done += ends.sum(dim=1)
        keep = live.any(dim=1)
        if not keep.all():  # drop the images with no live beam from every per-row tensor
            idx = keep.nonzero().flatten()
            rows = (idx[:, None] * K + rank).flatten()
            image = [image[i] for i in idx.tolist()]
            beam_lp, n_done, new_tok = beam_lp[idx], n_done[idx], new_tok[idx]
            src, history = src[rows], history[rows]
            alpha_hist = alpha_hist[rows] if alpha_hist is not None else None
            memory = tuple(m[rows] for m in memory)
            base = torch.arange(len(idx), device=dev)[:, None] * K
        state = tuple(s[src] for s in state)
        tokens = new_tok.reshape(-1)
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in done]


def _plain_banned(seq: list[int], n: int) -> set[int]:
    """Tokens whose addition to ``seq`` would repeat one of its n-grams (plain loop)."""
    if n <= 0 or len(seq) < n:
        return set()
    prefix = seq[len(seq) - n + 1 :]
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i : i + n - 1] == prefix}


@torch.no_grad()
def beam_search_single(
    model: nn.Module,
    feats: torch.Tensor,
    *,
    beam_size: int = 5,
    max_len: int = 20,
    length_penalty: float = 0.0,
    no_repeat_ngram: int = 0,
    return_alphas: bool = False,
    n_best: int = 1,
    start: int = START,
    end: int = END,
    forbid: Sequence[int] = (PAD, START),
) -> list[list[Hypothesis]]:
    """The same search one image at a time, with Python lists of live beams (the reference)."""
    results = []
    for i in range(feats.shape[0]):
        memory = model.prepare(feats[i : i + 1])
        state = model.init_state(memory)
        # live beams: (words, summed logprob as a 0-d tensor, attention rows)
        beams: list[tuple[list[int], torch.Tensor, list[torch.Tensor]]] = [([], None, [])]
        done: list[Hypothesis] = []
        for t in range(max_len):
            k = len(beams)
            mem = tuple(m.expand(k, *m.shape[1:]) for m in memory)
            tokens = torch.tensor([b[0][-1] if b[0] else start for b in beams])
            logprobs, state, alpha = model.step(tokens.to(feats.device), state, mem)
            logprobs = logprobs.clone()
            logprobs[:, list(forbid)] = float("-inf")
            for j, (words, _, _) in enumerate(beams):
                for tok in _plain_banned(words, no_repeat_ngram):
                    logprobs[j, tok] = float("-inf")
            if t > 0:
                logprobs = torch.stack([b[1] for b in beams])[:, None] + logprobs
            V = logprobs.shape[1]
            top_lp, top_idx = logprobs.reshape(-1).topk(min(beam_size - len(done), k * V))
            keep, rows = [], []
            for lp, idx in zip(top_lp, top_idx.tolist(), strict=True):
                if not torch.isfinite(lp):
                    break
                j, tok = divmod(idx, V)
                words, _, atts = beams[j]
                att = atts + [alpha[j]] if return_alphas and alpha is not None else atts
                if tok == end or t == max_len - 1:
                    fin = tok == end
                    new = words if fin else words + [tok]
                    A = torch.stack(att)[: len(new)] if att else None
                    score = _normalise(float(lp), t + 1, length_penalty)
                    done.append(Hypothesis(new, float(lp), score, fin, A))
                else:
                    keep.append((words + [tok], lp, att))
                    rows.append(j)
            if not keep:
                break
            beams = keep
            state = tuple(s[rows] for s in state)
        results.append(sorted(done, key=lambda h: -h.score)[:n_best])
    return results
