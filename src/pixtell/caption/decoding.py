"""Caption decoding: greedy, batched beam search and its one-image reference, and lexically
constrained beam search (every caption contains a given word or phrase).

All of them drive a model through ``prepare`` / ``init_state`` / ``step`` (see
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
so other constraints can plug in beside the built-in ones. Forcing a word needs more than a
ban: :func:`constrained_beam_search` keeps per-beam progress and allocates the beam by it.
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


def _extend(
    alpha_hist: torch.Tensor | None, alpha: torch.Tensor, src: torch.Tensor
) -> torch.Tensor:
    """Each kept beam's attention history (taken from its source beam) plus this step's."""
    step = alpha[src][:, None]
    return step if alpha_hist is None else torch.cat([alpha_hist[src], step], dim=1)


def _finish(
    done: list[list[Hypothesis]],
    image: list[int],
    close: torch.Tensor,
    ends: torch.Tensor,
    history: torch.Tensor,
    top_lp: torch.Tensor,
    alpha_hist: torch.Tensor | None,
    t: int,
    length_penalty: float,
) -> None:
    """Record the beams that close at step ``t`` (ended with ``<end>``, or cut at max_len)."""
    K = close.shape[1]
    for b, r in close.nonzero().tolist():
        row, fin = b * K + r, bool(ends[b, r])
        words = history[row, : t + (0 if fin else 1)].tolist()
        lp = float(top_lp[b, r])
        att = alpha_hist[row, : len(words)] if alpha_hist is not None else None
        done[image[b]].append(
            Hypothesis(words, lp, _normalise(lp, t + 1, length_penalty), fin, att)
        )


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
            alpha_hist = _extend(alpha_hist, alpha, src)
        _finish(done, image, close, ends, history, top_lp, alpha_hist, t, length_penalty)
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


# -- lexically constrained beam search ------------------------------------------------------
# Hand-written: transformers' constrained beam search (gone from its core in v5) only drives
# its own ``generate`` models, no library constrains a model stepped through ``prepare`` /
# ``init_state`` / ``step``, and Aho-Corasick packages match strings without handing out the
# transition table that the search needs as a tensor.


@dataclass
class _Automaton:
    """The constraints of a batch as one token automaton (Aho-Corasick per image).

    State 0 is "satisfied" (absorbing) for every image; the others are the unfinished trie
    nodes of each image's alternatives. ``need[s]`` is the fewest words that take state ``s``
    to satisfied, ``table[s, col[token]]`` the state after ``token`` (column ``C``: any token
    that appears in no constraint).
    """

    table: torch.Tensor  # (S, C + 1) long
    need: torch.Tensor  # (S,) long
    col: torch.Tensor  # (V,) long
    words: torch.Tensor  # (C,) the word of each column
    root: torch.Tensor  # (B,) start state of each image (0 when it has no constraint)
    tokens: torch.Tensor  # (B, T) each image's constraint words, padded with -1


def _image_automaton(alts: list[tuple[int, ...]]) -> tuple[list[dict[int, int]], list[int]]:
    """Aho-Corasick over one image's alternatives: (goto on every alphabet word, need) per
    trie node, where an accepting node is mapped to -1 ("satisfied")."""
    children: list[dict[int, int]] = [{}]
    accept = [False]
    for alt in alts:
        node = 0
        for tok in alt:
            if tok not in children[node]:
                children.append({})
                accept.append(False)
                children[node][tok] = len(children) - 1
            node = children[node][tok]
        accept[node] = True
    alphabet = sorted({tok for alt in alts for tok in alt})
    fail, order, queue = [0] * len(children), [], list(children[0].values())
    while queue:  # breadth first, so a node's failure link is final before its children's
        node = queue.pop(0)
        order.append(node)
        for tok, child in children[node].items():
            f = fail[node]
            while f and tok not in children[f]:
                f = fail[f]
            fail[child] = children[f].get(tok, 0) if children[f].get(tok) != child else 0
            accept[child] = accept[child] or accept[fail[child]]
            queue.append(child)
    goto: list[dict[int, int]] = [{} for _ in children]
    for node in [0, *order]:
        for tok in alphabet:
            if tok in children[node]:
                goto[node][tok] = children[node][tok]
            else:
                goto[node][tok] = goto[fail[node]][tok] if node else 0
    inf = len(children) + max(len(a) for a in alts)
    need = [0 if a else inf for a in accept]
    changed = True
    while changed:  # shortest distance to an accepting node (a tiny graph: Bellman-Ford)
        changed = False
        for node in range(len(children)):
            # any word outside the alphabet falls back to the root
            best = min([need[goto[node][tok]] for tok in alphabet] + [need[0]]) + 1
            if not accept[node] and best < need[node]:
                need[node], changed = best, True
    mapped = [{tok: (-1 if accept[n] else n) for tok, n in g.items()} for g in goto]
    return mapped, need


def _compile_constraints(
    constraints: Sequence[Sequence[Sequence[int]]],
    vocab_size: int,
    banned: Sequence[int],
    max_len: int,
    device: torch.device,
) -> _Automaton:
    """Check every alternative and build the batch's :class:`_Automaton`."""
    per_image: list[list[tuple[int, ...]]] = []
    for i, alts in enumerate(constraints):
        clean: list[tuple[int, ...]] = []
        for alt in alts:
            alt = tuple(int(tok) for tok in alt)
            bad = [tok for tok in alt if not 0 <= tok < vocab_size or tok in banned]
            if not alt or bad:
                raise ValueError(
                    f"constraint {list(alt)} of image {i}: "
                    + ("empty" if not alt else f"ids {bad} can never be generated")
                )
            if len(alt) <= max_len and alt not in clean:
                clean.append(alt)
        if alts and not clean:
            raise ValueError(f"every constraint of image {i} is longer than max_len={max_len}")
        per_image.append(clean)
    words = sorted({tok for alts in per_image for alt in alts for tok in alt})
    col = torch.full((vocab_size,), len(words), dtype=torch.long)
    col[words] = torch.arange(len(words))
    table, need, roots, tokens = [[0] * (len(words) + 1)], [0], [], []
    for alts in per_image:
        if not alts:
            roots.append(0)
            tokens.append([])
            continue
        goto, node_need = _image_automaton(alts)
        base = len(table) - 1  # trie node n (n >= 1 unfinished) -> global state base + n + 1
        gid = {n: (0 if node_need[n] == 0 else base + n + 1) for n in range(len(goto))}
        gid[-1] = 0
        root = gid[0]
        for n, g in enumerate(goto):
            if gid[n]:
                table.append([gid[g[w]] if w in g else root for w in words] + [root])
                need.append(node_need[n])
            else:
                table.append([0] * (len(words) + 1))  # an accepting node is never entered
                need.append(0)
        roots.append(root)
        tokens.append(sorted({tok for alt in alts for tok in alt}))
    width = max(map(len, tokens), default=0)
    return _Automaton(
        torch.tensor(table, dtype=torch.long, device=device),
        torch.tensor(need, dtype=torch.long, device=device),
        col.to(device),
        torch.tensor(words, dtype=torch.long, device=device),
        torch.tensor(roots, dtype=torch.long, device=device),
        torch.tensor(
            [t + [-1] * (width - len(t)) for t in tokens], dtype=torch.long, device=device
        ).view(len(tokens), width),
    )


def _allocate(
    cand: torch.Tensor,
    cand_lp: torch.Tensor,
    bank: torch.Tensor,
    free: torch.Tensor,
    n_banks: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic beam allocation over candidates (B, M): ``free[b]`` slots split evenly between
    the ``n_banks[b]`` banks (the remainder to the banks nearest satisfaction); a bank's
    share goes to its best candidates, unused slots to the best of the rest. Returns the
    scores with duplicates at -inf and the order of the ``k`` kept, shares first."""
    M = cand.shape[1]
    earlier = torch.ones(M, M, dtype=torch.bool, device=cand.device).tril(-1)  # [j, i]: i < j
    dup = ((cand[:, :, None] == cand[:, None, :]) & earlier).any(dim=2)
    cand_lp = cand_lp.masked_fill(dup, float("-inf"))
    ok = torch.isfinite(cand_lp)
    # place within its bank: the candidates before it by score, ties by position
    ahead = (cand_lp[:, None, :] > cand_lp[:, :, None]) | (
        (cand_lp[:, None, :] == cand_lp[:, :, None]) & earlier
    )
    place = (ahead & (bank[:, None, :] == bank[:, :, None]) & ok[:, None, :]).sum(dim=2)
    share = torch.div(free, n_banks, rounding_mode="floor")[:, None] + (
        bank >= (n_banks - free % n_banks)[:, None]
    )
    chosen = (ok & (place < share)).int()
    order = cand_lp.argsort(dim=1, descending=True, stable=True)
    order = order.gather(1, chosen.gather(1, order).argsort(dim=1, descending=True, stable=True))
    return cand_lp, order[:, :k]


@torch.no_grad()
def constrained_beam_search(
    model: nn.Module,
    feats: torch.Tensor,
    constraints: Sequence[Sequence[Sequence[int]]],
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
    """:func:`beam_search` whose every hypothesis contains one of ``constraints[i]`` (word-id
    sequences, alternatives) contiguously; an empty list leaves image ``i`` unconstrained.

    Dynamic beam allocation (Post & Vilar 2018): each beam carries its progress towards its
    constraint (an Aho-Corasick state, so a broken partial match falls back correctly), and
    the candidates of every step, namely the plain top ``k``, every constraint word that
    brings a beam closer and each beam's best word, are kept bank by bank, one bank per
    number of words still needed, ``k`` split evenly between banks (slots a bank cannot fill
    go to the best remaining candidates). ``<end>`` is only allowed once satisfied; a word
    that leaves too few steps to finish the constraint within ``max_len`` is not, so cut
    hypotheses are satisfied too. A constraint word that ``no_repeat_ngram`` bans is still
    allowed where it brings the beam closer, and the beam must then complete the phrase
    straight away. Unconstrained images get exactly :func:`beam_search`'s hypotheses.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), not {n_best}")
    B, K, dev = feats.shape[0], beam_size, feats.device
    if len(constraints) != B:
        raise ValueError(f"{len(constraints)} constraint lists for {B} images")
    memory = tuple(m.repeat_interleave(K, dim=0) for m in model.prepare(feats))
    state = model.init_state(memory)
    tokens = torch.full((B * K,), start, dtype=torch.long, device=dev)
    history = tokens.new_empty(B * K, 0)
    alpha_hist: torch.Tensor | None = None
    beam_lp: torch.Tensor | None = None
    auto: _Automaton | None = None
    n_done = torch.zeros(B, dtype=torch.long, device=dev)
    rank = torch.arange(K, device=dev)
    base = torch.arange(B, device=dev)[:, None] * K
    image = list(range(B))
    done: list[list[Hypothesis]] = [[] for _ in range(B)]
    for t in range(max_len):
        logprobs, state, alpha = model.step(tokens, state, memory)
        logprobs = logprobs.clone()
        V = logprobs.shape[1]
        if auto is None:
            auto = _compile_constraints(constraints, V, [*forbid, end], max_len, dev)
            cstate = auto.root.repeat_interleave(K)  # constraint state per beam row
            committed = torch.zeros_like(cstate, dtype=torch.bool)
            levels = auto.need[auto.root]  # words needed at the start: banks 0..levels
            words = auto.tokens
        # words needed after each constraint word (columns; the last: any other word)
        need_now, need_col = auto.need[cstate], auto.need[auto.table[cstate]]
        closer_col = need_col < need_now[:, None]
        logprobs[:, list(forbid)] = float("-inf")
        if no_repeat_ngram > 0:
            repeats = no_repeat_ngram_mask(history, no_repeat_ngram, V)
            # a beam that took a banned word for its constraint must finish the phrase
            # there and then, so n-grams repeat only inside the phrase
            banned = repeats | committed[:, None]
            banned[:, auto.words] &= ~closer_col[:, :-1]  # only constraint words get closer
            logprobs = logprobs.masked_fill(banned, float("-inf"))
        for proc in processors:
            logprobs = proc(history, logprobs)
        late = need_col > max_len - t - 1  # too few steps left to finish after that word
        if late.any():
            logprobs = logprobs.masked_fill(late[:, auto.col], float("-inf"))
        logprobs[:, end] = logprobs[:, end].masked_fill(need_now > 0, float("-inf"))
        if beam_lp is None:
            beam_lp = logprobs.new_full((B, K), float("-inf"))
            beam_lp[:, 0] = 0.0
        nb = beam_lp.shape[0]
        total = beam_lp[:, :, None] + logprobs.view(nb, K, V)
        # candidates as flat (beam · V + word) ids: the plain top k first, so that with no
        # constraint the selection below is exactly beam_search's
        top_lp, top_idx = total.view(nb, K * V).topk(K, dim=1)
        w = words[:, None, :].expand(nb, K, words.shape[1]).clamp(min=0)
        fwd = closer_col.view(nb, K, -1).gather(2, auto.col[w]) & (words[:, None, :] >= 0)
        fwd_lp = total.gather(2, w).masked_fill(~fwd, float("-inf"))
        best_lp, best_tok = total.max(dim=2)
        cand_lp = torch.cat([top_lp, fwd_lp.view(nb, -1), best_lp], dim=1)
        cand = torch.cat(
            [top_idx, (rank[None, :, None] * V + w).view(nb, -1), rank * V + best_tok], 1
        )
        rows = base + torch.div(cand, V, rounding_mode="floor")
        bank = levels[:, None] - need_col[rows, auto.col[cand % V]]
        cand_lp, order = _allocate(cand, cand_lp, bank, K - n_done, levels + 1, K)
        top_lp, top_idx = cand_lp.gather(1, order), cand.gather(1, order)
        src = (base + torch.div(top_idx, V, rounding_mode="floor")).view(-1)
        new_tok = top_idx % V
        new_col = auto.col[new_tok.view(-1)]
        if no_repeat_ngram > 0:
            took_banned = repeats[src, new_tok.view(-1)]
            committed = (committed[src] | took_banned) & (need_col[src, new_col] > 0)
        cstate = auto.table[cstate[src], new_col]
        valid = (rank[None] < (K - n_done)[:, None]) & torch.isfinite(top_lp)
        ends = valid & (new_tok == end)
        close = ends | valid if t == max_len - 1 else ends
        history = torch.cat([history[src], new_tok.view(-1, 1)], dim=1)
        if return_alphas and alpha is not None:
            alpha_hist = _extend(alpha_hist, alpha, src)
        _finish(done, image, close, ends, history, top_lp, alpha_hist, t, length_penalty)
        live = valid & ~ends
        if not live.any():
            break
        beam_lp = top_lp.masked_fill(~live, float("-inf"))
        n_done += ends.sum(dim=1)
        keep = live.any(dim=1)
        if not keep.all():
            idx = keep.nonzero().flatten()
            rows = (idx[:, None] * K + rank).flatten()
            image = [image[i] for i in idx.tolist()]
            beam_lp, n_done, new_tok = beam_lp[idx], n_done[idx], new_tok[idx]
            levels, words = levels[idx], words[idx]
            src, history, cstate = src[rows], history[rows], cstate[rows]
            committed = committed[rows]
            alpha_hist = alpha_hist[rows] if alpha_hist is not None else None
            memory = tuple(m[rows] for m in memory)
            base = torch.arange(len(idx), device=dev)[:, None] * K
        state = tuple(s[src] for s in state)
        tokens = new_tok.reshape(-1)
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in done]
