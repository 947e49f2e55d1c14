"""Caption models and encoders: shapes, teacher forcing == stepping, packed == masked."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pixtell.models import create, list_models
from pixtell.models.captioning import ShowAttendTell, ShowTell
from pixtell.models.encoders import build_encoder

V = 11
TINY = {
    "show_tell": dict(embed_dim=8, hidden_dim=12, dropout=0.0),
    "soft": dict(attention="soft", embed_dim=8, hidden_dim=12, attention_dim=6, dropout=0.0),
    "hard": dict(attention="hard", embed_dim=8, hidden_dim=12, attention_dim=6, dropout=0.0),
}
ENCODERS = {"small_cnn": {"width": 4}, "tinyvgg_a": {"width": 4}}


def tiny(kind: str, encoder: str = "small_cnn") -> nn.Module:
    arch = "show_tell" if kind == "show_tell" else "show_attend_tell"
    kw = dict(TINY[kind], encoder=encoder, encoder_kwargs=ENCODERS[encoder])
    return create(arch, "caption", num_classes=V, **kw)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Captions of lengths 6, 3, 5 padded to 8 columns (one more than needed)."""
    caps = torch.tensor(
        [[1, 5, 6, 7, 8, 2, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0], [1, 4, 4, 10, 2, 0, 0, 0]]
    )
    return caps, torch.tensor([6, 3, 5])


@pytest.mark.parametrize("kind", list(TINY))
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_shapes(kind: str, encoder: str) -> None:
    torch.manual_seed(0)
    net = tiny(kind, encoder).eval()
    images = torch.randn(3, 3, 64, 64)
    caps, lens = batch()
    with torch.no_grad():
        feats = net.encode(images)
        logits, alphas = net(feats, caps, lens)
        memory = net.prepare(feats)
        state = net.init_state(memory)
        logprobs, state2, alpha = net.step(torch.ones(3, dtype=torch.long), state, memory)
    C = net.feature_dim
    assert logits.shape == (3, 7, V)
    assert logprobs.shape == (3, V) and state2[0].shape == (3, 12)
    torch.testing.assert_close(logprobs.exp().sum(1), torch.ones(3))
    if kind == "show_tell":
        assert feats.shape == (3, C) and alphas is None and alpha is None
    else:
        side = 8 if encoder == "small_cnn" else 2  # stride 8 vs VGG's stride 32
        P = side * side
        assert feats.shape == (3, C, side, side)
        assert alphas.shape == (3, 7, P) and alpha.shape == (3, P)
        torch.testing.assert_close(alpha.sum(1), torch.ones(3))
        # attention weights sum to one at each predicted word and are zero past the end
        torch.testing.assert_close(alphas.sum(-1)[0, :5], torch.ones(5))
        assert alphas[1, 2:].abs().sum() == 0
    assert logits[1, 2:].abs().sum() == 0  # caption 1 predicts 2 words only


@pytest.mark.parametrize("kind", list(TINY))
def test_teacher_forcing_equals_stepping(kind: str) -> None:
    """forward's logits at t are step's log-probabilities after feeding the true words."""
    torch.manual_seed(1)
    net = tiny(kind).eval()
    caps, lens = batch()
    with torch.no_grad():
        feats = net.encode(torch.randn(3, 3, 64, 64))
        logits, alphas = net(feats, caps, lens)
        memory = net.prepare(feats)
        state = net.init_state(memory)
        for t in range(4):  # the first 4 words are real for every caption up to index 1's end
            logprobs, state, alpha = net.step(caps[:, t], state, memory)
            keep = lens - 1 > t
            torch.testing.assert_close(
                logprobs[keep], logits[keep, t].log_softmax(-1), atol=1e-5, rtol=1e-5
            )
            if alpha is not None:
                torch.testing.assert_close(alpha[keep], alphas[keep, t], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", list(TINY))
def test_packed_equals_masked_and_ignores_padding(kind: str) -> None:
    torch.manual_seed(2)
    net = tiny(kind).eval()
    caps, lens = batch()
    with torch.no_grad():
        feats = net.encode(torch.randn(3, 3, 64, 64))
        packed = net(feats, caps, lens, packed=True)
        masked = net(feats, caps, lens, packed=False)
        garbage = caps.clone()
        garbage[caps == 0] = 7  # whatever sits in the padding must not matter
        other = net(feats, garbage, lens, packed=False)
    for a, b, c in zip(packed, masked, other, strict=True):
        if a is None:
            assert b is None and c is None
            continue
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)


def test_hard_attention_samples_in_training_and_is_deterministic_in_eval() -> None:
    torch.manual_seed(3)
    net = tiny("hard").train()
    caps, lens = batch()
    feats = net.encode(torch.randn(3, 3, 64, 64)).detach()
    logits, alphas, aux = net(feats, caps, lens, return_aux=True)
    valid = torch.arange(7)[None] < (lens[:, None] - 1)
    P = alphas.shape[-1]
    assert set(aux) == {"sample_logp", "entropy", "sampled"} and aux["sampled"].dtype == torch.bool
    assert (aux["sample_logp"][valid] <= 0).all() and (aux["sample_logp"][~valid] == 0).all()
    ent = aux["entropy"][valid]
    assert (ent >= 0).all() and (ent <= torch.log(torch.tensor(float(P))) + 1e-5).all()
    # REINFORCE needs a gradient path from log p(s) to the attention layers
    aux["sample_logp"].sum().backward()
    assert net.att_score.weight.grad is not None and net.att_score.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        first, second = net(feats, caps, lens), net(feats, caps, lens)
    torch.testing.assert_close(first[0], second[0], atol=0, rtol=0)
    assert net(feats, caps, lens, return_aux=True)[2] == {}


def test_hard_expectation_inference_equals_soft_reading() -> None:
    """With hard_inference='expectation' a hard model decodes exactly as its soft twin."""
    torch.manual_seed(4)
    hard = tiny("hard").eval()
    hard.hard_inference = "expectation"
    soft = tiny("soft").eval()
    soft.load_state_dict(hard.state_dict())
    caps, lens = batch()
    with torch.no_grad():
        feats = hard.encode(torch.randn(3, 3, 64, 64))
        torch.testing.assert_close(hard(feats, caps, lens)[0], soft(feats, caps, lens)[0])


def test_every_caption_model_builds_with_defaults() -> None:
    """What ``pixtell models`` does: num_classes=1000 and nothing else."""
    specs = list_models("caption")
    assert {s.name for s in specs} >= {"show_tell", "show_attend_tell"}
    for spec in specs:
        net = create(spec.name, "caption", num_classes=1000).eval()
        with torch.no_grad():
            feats = net.encode(torch.randn(1, 3, spec.input_size, spec.input_size))
            logprobs, _, _ = net.step(
                torch.ones(1, dtype=torch.long),
                net.init_state(net.prepare(feats)),
                net.prepare(feats),
            )
        assert logprobs.shape == (1, 1000)
    assert isinstance(create("show_tell", "caption", num_classes=5), ShowTell)
    assert isinstance(create("show_attend_tell", "caption", num_classes=5), ShowAttendTell)
    with pytest.raises(ValueError, match="soft"):
        create("show_attend_tell", "caption", num_classes=5, attention="sharp")


_BIG = {"resnet50", "resnet101", "resnet152", "vit_b_16"} | {f"tinyvgg_{c}" for c in "bcde"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(s.name, marks=pytest.mark.slow) if s.name in _BIG else s.name
        for s in list_models("classify")
        if not s.needs_clip  # they read CLIP embeddings, not pixels: no map to cut
    ],
)
def test_build_encoder_gives_a_spatial_map_for_every_classifier(name: str) -> None:
    enc, channels = build_encoder(name)
    size = 224 if name.startswith("vit") else 64  # torchvision's ViT takes one size only
    with torch.no_grad():
        out = enc.eval()(torch.randn(1, 3, size, size))
    assert out.ndim == 4 and out.shape[1] == channels and out.shape[2] * out.shape[3] > 1


def test_build_encoder_pools_to_a_fixed_grid() -> None:
    enc, _ = build_encoder("small_cnn", grid=3, width=4)
    with torch.no_grad():
        assert enc.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 32, 3, 3)
        assert enc(torch.randn(1, 3, 40, 96)).shape == (1, 32, 3, 3)


def test_resnet_encoder_is_the_classifier_up_to_layer4(tmp_path) -> None:  # noqa: ANN001
    """Same weights through ``--weights``: the map equals torchvision's layer4 output."""
    torch.manual_seed(5)
    clf = create("resnet18", num_classes=4).eval()
    path = tmp_path / "clf.safetensors"
    save_file(clf.state_dict(), path)
    enc, channels = build_encoder("resnet18", weights=path)
    trunk = nn.Sequential(*list(clf.children())[:-2]).eval()  # resnet minus avgpool and fc
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        got, want = enc.eval()(x), trunk(x)
    assert channels == 512 and got.shape == (2, 512, 7, 7)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", [s.name for s in list_models("classify") if s.needs_clip])
def test_models_that_read_clip_embeddings_are_refused_as_encoders(name: str) -> None:
    with pytest.raises(ValueError, match="CLIP embeddings, not pixels"):
        build_encoder(name)
