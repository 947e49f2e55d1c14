"""Captioning models: Show and Tell (Vinyals 2015) and Show, Attend and Tell (Xu 2015).

Every model has one interface, used by training, decoding and export alike:

- ``feats = model.encode(images)``: the frozen-able CNN part. Its output is exactly what a
  feature cache stores (a pooled vector (B, C) for Show and Tell, a map (B, C, H, W) for
  Show, Attend and Tell), so training from cached features skips ``encode`` and nothing else.
- ``memory = model.prepare(feats)``: per-image tensors computed once per decode (the image
  embedding; the flattened map and its attention projection). A tuple of batch-first
  tensors, so a beam search expands it with ``repeat_interleave`` and never reorders it.
- ``state = model.init_state(memory)``: the LSTM state (h, c) before the ``<start>`` token.
- ``logprobs, state, alpha = model.step(tokens, state, memory)``: one word for a batch;
  ``alpha`` (B, P) is the attention distribution (``None`` without attention).
- ``logits, alphas = model(feats, captions, lengths)``: teacher forcing. ``logits[:, t]``
  predicts ``captions[:, t + 1]`` (shape (B, T - 1, V)); positions at or after
  ``lengths - 1`` are zero. ``packed=True`` skips finished captions (packed sequences /
  a shrinking batch), ``packed=False`` runs the padded batch and masks: same results.

Token ids follow the vocabulary convention ``<pad>`` = 0, ``<start>`` = 1, ``<end>`` = 2.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pixtell.models.encoders import build_encoder
from pixtell.models.registry import get_spec, register

State = tuple[torch.Tensor, torch.Tensor]
Memory = tuple[torch.Tensor, ...]
DEFAULT_ENCODER = "small_cnn"


class CaptionNet(nn.Module):
    """What both captioners share: the encoder, word embedding and output layer."""

    def __init__(
        self,
        vocab_size: int,
        encoder: str,
        pretrained: bool,
        encoder_weights: str | Path | None,
        grid: int | None,
        embed_dim: int,
        hidden_dim: int,
        dropout: float,
        encoder_kwargs: dict | None,
    ) -> None:
        super().__init__()
        self.encoder, self.feature_dim = build_encoder(
            encoder,
            pretrained=pretrained,
            weights=encoder_weights,
            grid=grid,
            **(encoder_kwargs or {}),
        )
        spec = get_spec(encoder, "classify")
        # Preprocessing the images need (the encoder's, not the caption model's defaults).
        self.encoder_name, self.input_size = encoder, spec.input_size
        self.mean, self.std = spec.mean, spec.std
        self.vocab_size, self.hidden_dim = vocab_size, hidden_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → the features the decoder reads (and a cache stores)."""
        return self.encoder(images)

    def prepare(self, feats: torch.Tensor) -> Memory:
        raise NotImplementedError

    def init_state(self, memory: Memory) -> State:
        raise NotImplementedError

    def step(
        self, tokens: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        raise NotImplementedError


class ShowTell(CaptionNet):
    """NIC: the pooled CNN feature → Linear → BatchNorm is the LSTM's first input (t = −1)."""

    def __init__(
        self,
        vocab_size: int,
        *,
        encoder: str = DEFAULT_ENCODER,
        pretrained: bool = False,
        encoder_weights: str | Path | None = None,
        encoder_kwargs: dict | None = None,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(
            vocab_size,
            encoder,
            pretrained,
            encoder_weights,
            None,
            embed_dim,
            hidden_dim,
            dropout,
            encoder_kwargs,
        )
        self.image_embed = nn.Sequential(
            nn.Linear(self.feature_dim, embed_dim), nn.BatchNorm1d(embed_dim)
        )
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images → the globally average-pooled feature (B, C)."""
        return self.encoder(images).mean(dim=(2, 3))

    def prepare(self, feats: torch.Tensor) -> Memory:
        return (self.image_embed(feats),)

    def init_state(self, memory: Memory) -> State:
        _, (h, c) = self.lstm(memory[0][:, None])
        return h[0], c[0]

    def step(
        self, tokens: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, None]:
        out, (h, c) = self.lstm(self.embed(tokens)[:, None], (state[0][None], state[1][None]))
        logits = self.fc(self.dropout(out[:, 0]))
        return F.log_softmax(logits, dim=-1), (h[0], c[0]), None

    def forward(
        self,
        feats: torch.Tensor,
        captions: torch.Tensor,
        lengths: torch.Tensor,
        *,
        packed: bool = True,
        return_aux: bool = False,
    ) -> tuple:
        """Teacher forcing: (logits (B, T − 1, V), None) [+ an empty aux dict]."""
        T = captions.shape[1]
        inputs = torch.cat([self.prepare(feats)[0][:, None], self.embed(captions[:, :-1])], 1)
        if packed:
            seq = pack_padded_sequence(
                inputs, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = self.lstm(seq)
            hidden, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        else:
            hidden, _ = self.lstm(inputs)
        # The output after the image input predicts nothing; the one after word t predicts t+1.
        logits = self.fc(self.dropout(hidden[:, 1:]))
        logits = logits.masked_fill(~_valid(lengths, T - 1)[..., None], 0.0)
        return (logits, None, {}) if return_aux else (logits, None)


class ShowAttendTell(CaptionNet):
    """Show, Attend and Tell: Bahdanau attention over the feature map, gated by β.

    ``attention="soft"`` reads the expectation Σ α_i a_i. ``attention="hard"`` samples one
    location s ~ Multinoulli(α) while training (with probability ``hard_mix`` an image uses
    the expectation instead, Xu et al. §4.1, to reduce variance); the module trains it with
    REINFORCE from the ``return_aux`` terms. At inference a hard model reads the most
    probable location (``hard_inference="argmax"``, deterministic, so beam search is exact)
    or the expectation (``"expectation"``, i.e. as if soft).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        encoder: str = DEFAULT_ENCODER,
        pretrained: bool = False,
        encoder_weights: str | Path | None = None,
        encoder_kwargs: dict | None = None,
        grid: int | None = None,
        attention: str = "soft",
        embed_dim: int = 64,
        hidden_dim: int = 256,
        attention_dim: int = 64,
        dropout: float = 0.3,
        hard_mix: float = 0.5,
        hard_inference: str = "argmax",
    ) -> None:
        if attention not in ("soft", "hard"):
            raise ValueError(f"attention must be 'soft' or 'hard', not {attention!r}")
        if hard_inference not in ("argmax", "expectation"):
            raise ValueError("hard_inference must be 'argmax' or 'expectation'")
        super().__init__(
            vocab_size,
            encoder,
            pretrained,
            encoder_weights,
            grid,
            embed_dim,
            hidden_dim,
            dropout,
            encoder_kwargs,
        )
        self.attention, self.hard_mix, self.hard_inference = attention, hard_mix, hard_inference
        C = self.feature_dim
        self.att_feat = nn.Linear(C, attention_dim)
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)
        self.att_score = nn.Linear(attention_dim, 1)
        self.gate = nn.Linear(hidden_dim, C)  # β = σ(f_β(h)): how much the image is read
        self.init_h = nn.Linear(C, hidden_dim)
        self.init_c = nn.Linear(C, hidden_dim)
        self.cell = nn.LSTMCell(embed_dim + C, hidden_dim)

    def prepare(self, feats: torch.Tensor) -> Memory:
        flat = feats.flatten(2).transpose(1, 2)  # (B, P, C)
        return flat, self.att_feat(flat)

    def init_state(self, memory: Memory) -> State:
        mean = memory[0].mean(dim=1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def _read(
        self, h: torch.Tensor, memory: Memory, expect: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Context z (B, C), α (B, P) and, for sampled hard attention, log p(s) and H[α]."""
        flat, proj = memory
        scores = self.att_score(torch.tanh(proj + self.att_hidden(h)[:, None])).squeeze(-1)
        log_alpha = F.log_softmax(scores, dim=1)
        alpha = log_alpha.exp()
        soft = torch.bmm(alpha[:, None], flat)[:, 0]
        logp = entropy = None
        if self.attention == "soft":
            z = soft
        elif self.training:
            s = torch.multinomial(alpha.detach(), 1)  # (B, 1)
            hard = flat.gather(1, s[..., None].expand(-1, -1, flat.shape[2]))[:, 0]
            z = torch.where(expect[:, None], soft, hard) if expect is not None else hard
            logp = log_alpha.gather(1, s)[:, 0]
            entropy = -(alpha * log_alpha).sum(dim=1)
        elif self.hard_inference == "argmax":
            s = alpha.argmax(dim=1, keepdim=True)
            z = flat.gather(1, s[..., None].expand(-1, -1, flat.shape[2]))[:, 0]
        else:
            z = soft
        return torch.sigmoid(self.gate(h)) * z, alpha, logp, entropy

    def _advance(
        self,
        emb: torch.Tensor,
        state: State,
        memory: Memory,
        expect: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        z, alpha, logp, entropy = self._read(state[0], memory, expect)
        h, c = self.cell(torch.cat([emb, z], dim=1), state)
        return self.fc(self.dropout(h)), (h, c), alpha, logp, entropy

    def step(
        self, tokens: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        logits, state, alpha, _, _ = self._advance(self.embed(tokens), state, memory)
        return F.log_softmax(logits, dim=-1), state, alpha

    def forward(
        self,
        feats: torch.Tensor,
        captions: torch.Tensor,
        lengths: torch.Tensor,
        *,
        packed: bool = True,
        return_aux: bool = False,
    ) -> tuple:
        """Teacher forcing: logits (B, T − 1, V), alphas (B, T − 1, P) [, aux].

        ``aux`` (hard attention while training, else empty): ``sample_logp`` and ``entropy``
        (B, T − 1), zero where padded, and ``sampled`` (B,), False for the images that read
        the expectation this time.
        """
        B, T = captions.shape
        memory = self.prepare(feats)
        steps = lengths.to(captions.device) - 1
        L, P = T - 1, memory[0].shape[1]
        emb = self.embed(captions[:, :-1])
        hard_train = self.attention == "hard" and self.training
        expect = None
        if hard_train:
            expect = torch.rand(B, device=captions.device) < self.hard_mix
        if packed:  # rows sorted by length; at step t only the captions still running
            order = torch.argsort(steps, descending=True, stable=True)
            steps_s = steps[order]
            memory_s = tuple(m[order] for m in memory)
            emb_s, expect_s = emb[order], (expect[order] if expect is not None else None)
        else:
            steps_s, memory_s, emb_s, expect_s = steps, memory, emb, expect
        h, c = self.init_state(memory_s)
        logits = emb.new_zeros(B, L, self.vocab_size)
        alphas = emb.new_zeros(B, L, P)
        logps, ents = emb.new_zeros(B, L), emb.new_zeros(B, L)
        for t in range(int(steps.max()) if B else 0):
            n = int((steps_s > t).sum()) if packed else B
            mem_t = tuple(m[:n] for m in memory_s)
            ex_t = expect_s[:n] if expect_s is not None else None
            out, (h, c), alpha, logp, ent = self._advance(emb_s[:n, t], (h[:n], c[:n]), mem_t, ex_t)
            logits[:n, t], alphas[:n, t] = out, alpha
            if logp is not None:
                logps[:n, t], ents[:n, t] = logp, ent
        if packed:
            inverse = torch.argsort(order)
            logits, alphas, logps, ents = (
                logits[inverse],
                alphas[inverse],
                logps[inverse],
                ents[inverse],
            )
        valid = _valid(lengths, L)
        logits = logits.masked_fill(~valid[..., None], 0.0)
        alphas = alphas.masked_fill(~valid[..., None], 0.0)
        if not return_aux:
            return logits, alphas
        aux: dict[str, torch.Tensor] = {}
        if hard_train:
            aux = {
                "sample_logp": logps.masked_fill(~valid, 0.0),
                "entropy": ents.masked_fill(~valid, 0.0),
                "sampled": ~expect,
            }
        return logits, alphas, aux


def _valid(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) mask of the predicted positions: t < length − 1."""
    t = torch.arange(steps, device=lengths.device)
    return t[None] < (lengths[:, None] - 1)


_CAPTION_SPEC = dict(input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), head="fc")


@register(
    "show_tell",
    "caption",
    **_CAPTION_SPEC,  # type: ignore[arg-type]
    has_pretrained=False,
    description="Show and Tell (NIC): CNN embedding as the first LSTM input",
)
def build_show_tell(num_classes: int, pretrained: bool = False, **kw: object) -> nn.Module:
    """``num_classes`` is the vocabulary size; ``pretrained`` loads the encoder's weights."""
    return ShowTell(num_classes, pretrained=pretrained, **kw)  # type: ignore[arg-type]


@register(
    "show_attend_tell",
    "caption",
    **_CAPTION_SPEC,  # type: ignore[arg-type]
    has_pretrained=False,
    description="Show, Attend and Tell: soft or hard attention over the CNN feature map",
)
def build_show_attend_tell(num_classes: int, pretrained: bool = False, **kw: object) -> nn.Module:
    """``num_classes`` is the vocabulary size; ``pretrained`` loads the encoder's weights."""
    return ShowAttendTell(num_classes, pretrained=pretrained, **kw)  # type: ignore[arg-type]
