"""Engine pieces: RNG state survives a weights-only checkpoint; precision choice."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from pixtell.engine import RNGState, precision_for


def test_rng_state_round_trips_through_a_weights_only_checkpoint() -> None:
    cb = RNGState()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    buf = io.BytesIO()
    torch.save({"rng": cb.state_dict()}, buf)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    random.seed(9)  # drift away
    np.random.seed(9)
    torch.manual_seed(9)
    buf.seek(0)
    cb.load_state_dict(torch.load(buf, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_mixed_precision_is_bf16_on_cpu() -> None:
    assert precision_for(False, "cpu") == "32-true"
    assert precision_for(True, "cpu") == "bf16-mixed"
    assert precision_for(True, "gpu") == "16-mixed"
