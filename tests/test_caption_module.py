"""CaptionModule: one training step, real-decoding validation, frozen / fine-tuned encoder."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pixtell.caption.data import collate_captions
from pixtell.caption.module import CaptionModule
from pixtell.caption.vocab import Vocabulary
from pixtell.data.demo import render_scene
from pixtell.metrics.caption import score

TINY = dict(embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0, encoder_kwargs={"width": 4})


@pytest.fixture(scope="module")
def scenes() -> tuple[torch.Tensor, list[list[str]], Vocabulary]:
    rng = np.random.default_rng(0)
    demo = [render_scene(rng, img_size=32, n_objects=1) for _ in range(6)]
    images = torch.stack(
        [
            torch.from_numpy(np.asarray(s.image, np.float32) / 127.5 - 1).permute(2, 0, 1)
            for s in demo
        ]
    )
    refs = [s.captions for s in demo]
    return images, refs, Vocabulary.build([c for r in refs for c in r], min_word_count=1)


def loaders(images, refs, vocab, inputs=None):  # noqa: ANN001, ANN201
    """Train pairs (first caption of each image) and eval (inputs, index) batches."""
    inputs = images if inputs is None else inputs
    pairs = [
        (x, torch.tensor(vocab.encode(r[0])), len(vocab.encode(r[0])))
        for x, r in zip(inputs, refs, strict=True)
    ]
    train = DataLoader(pairs, batch_size=3, collate_fn=collate_captions)
    val = DataLoader(TensorDataset(inputs, torch.arange(len(inputs))), batch_size=4)
    return train, val


def trainer(**kw: object) -> L.Trainer:
    opts = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**opts, **kw})


def module(vocab: Vocabulary, refs: list[list[str]], **kw: object) -> CaptionModule:
    kw.setdefault("model", TINY)
    mod = CaptionModule(vocab.itos, "show_attend_tell", max_len=8, **kw)
    mod.val_references = refs
    return mod


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_trains_and_logs_bleu_of_really_decoded_captions(scenes, attention: str) -> None:  # noqa: ANN001
    images, refs, vocab = scenes
    torch.manual_seed(0)
    mod = module(vocab, refs, model={**TINY, "attention": attention}, fine_tune_encoder_after=0)
    before = {k: v.clone() for k, v in mod.net.state_dict().items()}
    tr = trainer(limit_train_batches=1)
    tr.fit(mod, *loaders(images, refs, vocab))
    m = tr.callback_metrics
    assert {"train_loss", "val_loss", "val_perplexity", "val_top5", "val_bleu4"} <= set(m)
    assert any(not torch.equal(before[k], v) for k, v in mod.net.state_dict().items())
    # val_bleu4 is the score of the module's own decoded captions against all references
    mod.eval()
    decoded = dict(enumerate(mod.captions(images)))
    assert float(m["val_bleu4"]) == pytest.approx(
        score(dict(enumerate(refs)), decoded, meteor=False)["Bleu_4"]
    )
    # perplexity is exp of the per-word cross-entropy over every reference
    assert float(m["val_perplexity"]) == pytest.approx(math.exp(float(m["val_loss"])), rel=1e-4)
    assert 0.0 <= float(m["val_top5"]) <= 1.0
    if attention == "hard":
        assert torch.isfinite(mod.reward_baseline)


def test_encoder_frozen_by_default_with_batchnorm_statistics_kept(scenes) -> None:  # noqa: ANN001
    images, refs, vocab = scenes
    torch.manual_seed(1)
    mod = module(vocab, refs)
    enc_before = {k: v.clone() for k, v in mod.net.encoder.state_dict().items()}
    dec_before = mod.net.fc.weight.clone()
    trainer(limit_train_batches=2, limit_val_batches=0).fit(mod, *loaders(images, refs, vocab))
    for k, v in mod.net.encoder.state_dict().items():  # weights and running statistics
        assert torch.equal(enc_before[k], v), k
    assert not torch.equal(dec_before, mod.net.fc.weight)


def test_encoder_fine_tuned_from_epoch_n_with_its_own_lr(scenes) -> None:  # noqa: ANN001
    images, refs, vocab = scenes
    torch.manual_seed(2)
    mod = module(vocab, refs, fine_tune_encoder_after=1, encoder_lr=1e-2, lr=1e-3, scheduler="none")
    seen: list[bool] = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):  # noqa: ANN001, ANN002, ANN202
            seen.append(all(p.requires_grad for p in pl_module.net.encoder.parameters()))
            assert pl_module.net.encoder.training == seen[-1]

    tr = trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=0, callbacks=[Watch()])
    tr.fit(mod, *loaders(images, refs, vocab))
    assert seen == [False, True]
    lrs = sorted({g["lr"] for g in tr.optimizers[0].param_groups})
    assert lrs == [1e-3, 1e-2]
    n_enc = sum(p.numel() for p in mod.net.encoder.parameters())
    n_opt = sum(p.numel() for g in tr.optimizers[0].param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in mod.net.parameters()) and n_enc > 0


def test_training_from_cached_features_equals_training_from_images(scenes) -> None:  # noqa: ANN001
    images, refs, vocab = scenes
    torch.manual_seed(3)
    a = module(vocab, refs)
    b = module(vocab, refs, from_features=True)
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    with torch.no_grad():
        feats = a.net.encode(images)
    ((xa, caps, lens),) = [next(iter(loaders(images, refs, vocab)[0]))]
    ((xb, caps_b, lens_b),) = [next(iter(loaders(images, refs, vocab, inputs=feats)[0]))]
    torch.testing.assert_close(
        a.training_step((xa, caps, lens), 0), b.training_step((xb, caps_b, lens_b), 0)
    )
    a.eval(), b.eval()
    assert a.captions(images) == b.captions(feats)
    with pytest.raises(ValueError, match="cached features"):
        module(vocab, refs, from_features=True, fine_tune_encoder_after=0)


def test_gradient_clipping_by_norm(scenes) -> None:  # noqa: ANN001
    images, refs, vocab = scenes
    norms: list[float] = []

    class Norm(L.Callback):
        # after the step the (clipped) gradients are still there; Lightning's
        # on_before_optimizer_step would see them before clipping
        def on_train_batch_end(self, trainer, pl_module, *args):  # noqa: ANN001, ANN002, ANN202
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    mod = module(vocab, refs, grad_clip=1e-3)
    trainer(limit_train_batches=1, limit_val_batches=0, callbacks=[Norm()]).fit(
        mod, *loaders(images, refs, vocab)
    )
    assert norms and all(n <= 1e-3 * 1.01 for n in norms)


def test_word_presence_loss_is_binary_cross_entropy_over_the_caption_words(scenes) -> None:  # noqa: ANN001
    images, refs, vocab = scenes
    torch.manual_seed(3)
    mod = module(vocab, refs, word_loss=0.5, fine_tune_encoder_after=0)
    mod.log = lambda *a, **k: None  # type: ignore[method-assign]
    mod.train()
    mod.net.eval()  # no dropout, fixed BatchNorm: the losses below differ only by the word term
    batch = next(iter(loaders(images, refs, vocab)[0]))
    x, captions, lengths = batch
    with torch.no_grad():
        feats = mod.net.encode(x)
        probs = torch.sigmoid(mod.word_head(feats.mean(dim=(2, 3))))
    # by hand: y_w = 1 when word w occurs in the caption, over the non-special words
    total, count = 0.0, 0
    for row, caption in enumerate(captions.tolist()):
        for w in range(4, len(vocab)):
            p = float(probs[row, w])
            total -= math.log(p) if w in caption else math.log(1 - p)
            count += 1
    expected = total / count
    assert float(mod._word_presence_loss(feats, captions)) == pytest.approx(expected, rel=1e-5)

    with_words = float(mod.training_step(batch, 0))
    mod.hparams.word_loss = 0.0
    mod.word_head, head = None, mod.word_head
    without = float(mod.training_step(batch, 0))
    assert with_words - without == pytest.approx(0.5 * expected, rel=1e-4)

    mod.word_head = head  # trained with the decoder, never exported with the captioner
    tr = trainer(limit_train_batches=1, limit_val_batches=0)
    tr.fit(mod, *loaders(images, refs, vocab))
    in_opt = {id(p) for g in tr.optimizers[0].param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in head.parameters())
    assert not any(k.startswith("word_head") for k in mod.net.state_dict())
