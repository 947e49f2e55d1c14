"""The captioning LightningModule: teacher forcing, attention terms, real-decoding validation.

Batches: training ``(inputs, captions (B, T), lengths (B,))``; validation either
``(inputs, image indices)`` into the split's references (``CaptionDataModule``), or a
training-style batch. ``inputs`` are images, or the encoder's features when
``from_features=True`` (a feature cache of a frozen encoder: ``net.encode`` is skipped).

Validation, per epoch: ``val_loss`` (cross-entropy per word, teacher forced on ALL the
references of each validation image), ``val_perplexity`` (its exponential), ``val_top5``
(teacher-forced top-5 word accuracy) and ``val_bleu4`` / ``val_cider`` of captions really
decoded (greedy or beam search) against all references, with ``pixtell.metrics.caption``.

Gradient clipping (``grad_clip``, by norm) is applied in ``configure_gradient_clipping``,
so no Trainer flag is needed; a Trainer ``gradient_clip_val`` overrides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from pixtell.caption.decoding import Hypothesis, beam_search, greedy
from pixtell.caption.vocab import END, PAD, START, UNK, Vocabulary
from pixtell.models import create
from pixtell.optim import ClipGradNorm, build_optimizer, optimizer_config, param_groups


class DecodedValidation:
    """LightningModule mixin: validation BLEU-4 / CIDEr of really decoded captions.

    ``validation_step`` stores each image's caption in ``self._candidates[index]``; at the
    epoch's end the captions of every rank (DDP splits the validation images) are scored
    against all references of ``val_references`` (the DataModule's, read at its start).
    """

    val_references: list[list[str]] | None
    _candidates: dict[int, str]
    trainer: Any  # annotations only: the LightningModule provides these
    _trainer: Any
    log: Any

    def on_validation_epoch_start(self) -> None:
        self._candidates = {}
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "references"):
            self.val_references = dm.references("val")

    def on_validation_epoch_end(self) -> None:
        candidates = _gather(self._candidates)
        if not candidates or self.val_references is None or self.trainer.sanity_checking:
            return
        from pixtell.metrics.caption import score

        refs = {i: self.val_references[i] for i in candidates}
        scores = score(refs, candidates, meteor=False)
        self.log("val_bleu4", scores["Bleu_4"], prog_bar=True, rank_zero_only=True)
        self.log("val_cider", scores["CIDEr"], rank_zero_only=True)


def _gather(candidates: dict[int, str]) -> dict[int, str]:
    """All ranks' decoded captions (DDP splits the validation images)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return candidates
    parts: list[dict[int, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, candidates)
    return {k: v for p in parts if p for k, v in p.items()}


class CaptionModule(ClipGradNorm, DecodedValidation, L.LightningModule):
    """Wraps a ``caption`` registry model (``self.net``) built for the vocabulary ``vocab``.

    The encoder is frozen (its BatchNorm kept in eval mode) unless
    ``fine_tune_encoder_after`` is set: from that epoch on it trains at ``encoder_lr``
    (0 trains it from the start, as a from-scratch encoder needs). Soft attention adds the
    doubly stochastic term ``attention_reg · mean_i (1 − Σ_t α_ti)²``; hard attention adds
    REINFORCE ``−λ_r (log p(y|s̃) − b) log p(s̃)`` with a moving-average baseline ``b`` and
    ``−λ_e H[α]`` (Xu et al. 2015, §4.1), both per word like the cross-entropy.

    ``word_loss`` > 0 adds a multi-label loss while the encoder trains: a linear layer on the
    mean encoder feature predicts which vocabulary words the image's caption uses (the
    "visual concepts" of Fang et al. 2015). It gives a from-scratch encoder a direct signal
    for every content word instead of one filtered through attention and the LSTM. The layer
    lives here, not in ``net``, so exported weights are the captioner's alone.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        arch: str = "show_attend_tell",
        *,
        model: dict[str, Any] | None = None,
        pretrained: bool = False,
        weights: str | None = None,
        from_features: bool = False,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        warmup_epochs: float = 0.0,
        step_size: int = 10,
        gamma: float = 0.1,
        epochs: int = 10,
        fine_tune_encoder_after: int | None = None,
        encoder_lr: float = 1e-4,
        attention_reg: float = 1.0,
        word_loss: float = 0.0,
        reinforce_weight: float = 1.0,
        entropy_weight: float = 0.01,
        baseline_decay: float = 0.9,
        grad_clip: float = 5.0,
        decode: str = "beam",
        beam_size: int = 3,
        max_len: int = 20,
        length_penalty: float = 0.0,
        no_repeat_ngram: int = 0,
    ) -> None:
        super().__init__()
        if decode not in ("beam", "greedy"):
            raise ValueError(f"decode must be 'beam' or 'greedy', not {decode!r}")
        if from_features and fine_tune_encoder_after is not None:
            raise ValueError("cannot fine-tune the encoder when training from cached features")
        self.save_hyperparameters()
        self.vocab = Vocabulary(list(vocab))
        self.net = create(
            arch,
            "caption",
            num_classes=len(self.vocab),
            pretrained=pretrained,
            weights=weights,
            **(model or {}),
        )
        V = len(self.vocab)
        self.word_head = nn.Linear(self.net.feature_dim, V) if word_loss > 0 else None
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity(ignore_index=PAD)
        self.val_top5 = MulticlassAccuracy(V, top_k=min(5, V), ignore_index=PAD, average="micro")
        # Moving-average REINFORCE baseline; not persistent so exported weights stay the net's.
        self.register_buffer("reward_baseline", torch.tensor(float("nan")), persistent=False)
        self.val_references: list[list[str]] | None = None
        self._candidates: dict[int, str] = {}

    # -- encoder stages ---------------------------------------------------------------------
    def encoder_trainable(self) -> bool:
        """True from epoch ``fine_tune_encoder_after`` on (never with cached features)."""
        after = self.hparams.fine_tune_encoder_after
        if after is None or self.hparams.from_features:
            return False
        return self._trainer is None or self.current_epoch >= after

    def train(self, mode: bool = True) -> CaptionModule:
        # A frozen encoder stays in eval mode so its BatchNorm statistics do not drift.
        super().train(mode)
        if mode and not self.encoder_trainable():
            self.net.encoder.eval()
        return self

    def on_train_epoch_start(self) -> None:
        trainable = self.encoder_trainable()
        for p in self.net.encoder.parameters():
            p.requires_grad_(trainable)
        self.train()

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """What the decoder reads: ``inputs`` themselves when they are cached features."""
        if self.hparams.from_features:
            return inputs
        if self.training and self.encoder_trainable():
            return self.net.encode(inputs)
        with torch.no_grad():
            return self.net.encode(inputs)

    # -- training ---------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor):  # noqa: ANN201
        """Teacher-forced (logits, alphas) from images or cached features."""
        return self.net(self.features(inputs), captions, lengths)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, captions, lengths = batch
        feats = self.features(inputs)
        logits, alphas, aux = self.net(feats, captions, lengths, return_aux=True)
        targets = captions[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD, reduction="none")
        n_words = (targets != PAD).sum().clamp(min=1)
        ce = nll.sum() / n_words
        loss = ce
        if alphas is not None and self.hparams.attention_reg > 0:
            coverage = ((1.0 - alphas.sum(dim=1)) ** 2).mean()
            loss = loss + self.hparams.attention_reg * coverage
            self.log("train_attention_reg", coverage, on_step=False, on_epoch=True)
        if aux:
            loss = loss + self._reinforce(nll, aux, n_words)
        if self.word_head is not None and self.encoder_trainable():
            words = self._word_presence_loss(feats, captions)
            loss = loss + self.hparams.word_loss * words
            self.log("train_word_loss", words, on_step=False, on_epoch=True)
        self.log("train_loss", ce, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def _word_presence_loss(self, feats: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of "word w is in this caption" over the content words."""
        assert self.word_head is not None
        pooled = feats.flatten(2).mean(dim=2) if feats.ndim > 2 else feats
        logits = self.word_head(pooled)
        target = torch.zeros_like(logits)
        target.scatter_(1, captions, 1.0)
        content = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
        content[[PAD, START, END, UNK]] = False
        return F.binary_cross_entropy_with_logits(logits[:, content], target[:, content])

    def _reinforce(
        self, nll: torch.Tensor, aux: dict[str, torch.Tensor], n_words: torch.Tensor
    ) -> torch.Tensor:
        """REINFORCE and entropy terms of hard attention; updates the moving baseline."""
        hp = self.hparams
        reward = -nll.detach().sum(dim=1)  # log p(y | s̃, a) of each caption
        if torch.isnan(self.reward_baseline):
            self.reward_baseline.fill_(reward.mean().item())
        advantage = (reward - self.reward_baseline) * aux["sampled"].to(reward.dtype)
        reinforce = -(advantage[:, None] * aux["sample_logp"]).sum() / n_words
        entropy = aux["entropy"].sum() / n_words
        decay = hp.baseline_decay
        self.reward_baseline.mul_(decay).add_((1 - decay) * reward.mean())
        self.log("train_entropy", entropy, on_step=False, on_epoch=True)
        return hp.reinforce_weight * reinforce - hp.entropy_weight * entropy

    # -- validation -------------------------------------------------------------------------
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if len(batch) == 3:
            inputs, captions, lengths = batch
            self._teacher_forced(self.features(inputs), captions, lengths)
            return
        inputs, index = batch
        feats = self.features(inputs)
        if self.val_references is not None:
            rows, captions, lengths = self.encode_references(
                [self.val_references[int(i)] for i in index]
            )
            self._teacher_forced(feats[rows.to(feats.device)], captions, lengths)
        for i, hyp in zip(index.tolist(), self.generate(feats, from_features=True), strict=True):
            self._candidates[int(i)] = self.vocab.decode(hyp.tokens)

    def _teacher_forced(
        self, feats: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
    ) -> None:
        captions, lengths = captions.to(feats.device), lengths.to(feats.device)
        logits, _ = self.net(feats, captions, lengths)
        targets = captions[:, 1:]
        words = (targets != PAD).sum()
        loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD)
        self.val_loss.update(loss, weight=words)
        self.val_ppl.update(logits, targets)
        keep = targets != PAD
        self.val_top5.update(logits[keep], targets[keep])
        self.log("val_loss", self.val_loss, prog_bar=True)
        self.log("val_perplexity", self.val_ppl)
        self.log("val_top5", self.val_top5)

    def encode_references(
        self, references: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every reference as ids: (image row of each, captions (N, T) padded, lengths)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        cap = getattr(dm, "max_len", None)
        ids, rows = [], []
        for row, refs in enumerate(references):
            for ref in refs:
                ids.append(torch.tensor(self.vocab.encode(ref, cap), dtype=torch.long))
                rows.append(row)
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long, device=self.device)
        captions = pad_sequence(ids, batch_first=True, padding_value=PAD).to(self.device)
        return torch.tensor(rows, dtype=torch.long), captions, lengths

    # -- decoding ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, inputs: torch.Tensor, *, from_features: bool | None = None
    ) -> list[Hypothesis]:
        """The best hypothesis per image with the module's decoding settings."""
        hp = self.hparams
        cached = hp.from_features if from_features is None else from_features
        feats = inputs if cached else self.net.encode(inputs)
        was_training = self.net.training
        self.net.eval()
        try:
            if hp.decode == "greedy":
                return greedy(
                    self.net,
                    feats,
                    hp.max_len,
                    length_penalty=hp.length_penalty,
                    no_repeat_ngram=hp.no_repeat_ngram,
                )
            hyps = beam_search(
                self.net,
                feats,
                beam_size=hp.beam_size,
                max_len=hp.max_len,
                length_penalty=hp.length_penalty,
                no_repeat_ngram=hp.no_repeat_ngram,
            )
            return [h[0] for h in hyps]
        finally:
            self.net.train(was_training)

    def captions(self, inputs: torch.Tensor) -> list[str]:
        """Decoded captions as text."""
        return [self.vocab.decode(h.tokens) for h in self.generate(inputs)]

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        decoder = nn.ModuleList(m for n, m in self.net.named_children() if n != "encoder")
        if self.word_head is not None:
            decoder.append(self.word_head)
        opt = build_optimizer(decoder, hp.optimizer, hp.lr, hp.weight_decay, hp.momentum)
        if hp.fine_tune_encoder_after is not None:
            # Its own LR; added before the scheduler so LambdaLR scales it as well.
            for group in param_groups(self.net.encoder, hp.weight_decay):
                opt.add_param_group({**group, "lr": hp.encoder_lr})
        return optimizer_config(opt, self.trainer, hp, monitor="val_bleu4", mode="max")
