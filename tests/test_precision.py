"""Per-encoder CPU precision: the probe's decision rule (simulated clock), settings, the engine's use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cass.engine._precision import (
    PRECISION_ENV,
    choose_cpu_precision,
    cpu_has_native_bf16,
    precision_setting,
    probe_precision,
)


class FakeEncoder:
    """A forward pass that takes ``fp32`` or ``bf16`` simulated seconds, by autocast state."""

    def __init__(self, fp32: float, bf16: float, first_call_extra: float = 0.0):
        self.now = 0.0
        self.fp32, self.bf16, self.extra = fp32, bf16, first_call_extra
        self.calls = {"fp32": 0, "bf16": 0}

    def clock(self) -> float:
        return self.now

    def __call__(self, x: torch.Tensor) -> None:
        assert x.shape[1:] == (3, 224, 224)
        kind = "bf16" if torch.is_autocast_enabled("cpu") else "fp32"
        self.now += (self.bf16 if kind == "bf16" else self.fp32) + (self.extra if self.calls[kind] == 0 else 0.0)
        self.calls[kind] += 1


def test_bf16_is_chosen_only_when_clearly_faster():
    dino_like = FakeEncoder(fp32=0.69, bf16=0.31, first_call_extra=2.0)  # the measured 2.2x
    choice = probe_precision(dino_like, clock=dino_like.clock)
    assert choice.dtype == torch.bfloat16 and "2.2x faster" in choice.reason
    assert choice.fp32_seconds == pytest.approx(0.69) and choice.bf16_seconds == pytest.approx(0.31)
    # a clear answer after one round: warm-up + one timed pass per precision
    assert dino_like.calls == {"fp32": 2, "bf16": 2}

    clip_like = FakeEncoder(fp32=0.16, bf16=0.80)  # the measured 5x slower
    assert probe_precision(clip_like, clock=clip_like.clock).dtype is None

    # within the margin (bf16 0.9x): float32 stays, after a second round
    close = FakeEncoder(fp32=1.0, bf16=0.9)
    choice = probe_precision(close, clock=close.clock)
    assert choice.dtype is None and close.calls == {"fp32": 3, "bf16": 3}


def test_warm_up_cost_does_not_decide():
    # bf16's first call pays 3 s of kernel setup: excluded, bf16 still wins
    enc = FakeEncoder(fp32=0.7, bf16=0.3, first_call_extra=3.0)
    assert probe_precision(enc, clock=enc.clock).dtype == torch.bfloat16


def test_tiny_encoders_are_not_probed_in_bf16():
    tiny = FakeEncoder(fp32=0.004, bf16=0.001)
    choice = probe_precision(tiny, clock=tiny.clock)
    assert choice.dtype is None and tiny.calls["bf16"] == 0 and "not worth" in choice.reason


def test_probe_times_the_real_batch():
    seen = []
    probe_precision(lambda x: seen.append(x.shape[0]), batch=8, clock=iter(range(100)).__next__)
    assert set(seen) == {8}


@pytest.mark.parametrize("setting, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_user_setting_overrides_the_probe(monkeypatch, setting, dtype):
    monkeypatch.setenv(PRECISION_ENV, setting)
    never = FakeEncoder(fp32=1.0, bf16=0.1)
    model = torch.nn.Linear(3, 5)
    choice = choose_cpu_precision("clip", never, model)
    assert choice.dtype == dtype and never.calls == {"fp32": 0, "bf16": 0}
    assert PRECISION_ENV in choice.reason


def test_a_bad_setting_says_what_to_use(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision_setting()


def test_cpu_flags_are_read_or_unknown():
    assert cpu_has_native_bf16() in (True, False, None)


def test_engine_forces_fp32_under_reference_quirks_and_on_request(monkeypatch):
    from napari_cass.engine import Segmenter, get_preset
    from napari_cass.engine.testing import tiny_models

    models = tiny_models()
    preset = get_preset("voc20").with_(short_side=112, crop=112, stride=56)
    img = np.random.default_rng(2).integers(0, 256, size=(112, 160, 3), dtype=np.uint8)

    def run(**kw):
        seg = Segmenter.from_models(*models, preset=preset, device="cpu", **kw)
        return seg.segment(img, "cat, dog, sky", return_probabilities=True).probabilities

    monkeypatch.setenv(PRECISION_ENV, "fp32")
    fp32 = run()
    assert np.array_equal(run(amp=False), fp32)  # the same float32 path
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    bf16 = run()
    # bfloat16 keeps 8 bits of mantissa: the encoders' outputs, hence the probabilities, move
    assert np.abs(bf16 - fp32).max() > 1e-4
    assert np.array_equal(run(amp=False), fp32)  # amp=False: float32 whatever the setting
    quirks_fp32 = run(reference_quirks=True, amp=False)
    assert np.array_equal(run(reference_quirks=True), quirks_fp32)  # reference_quirks: never autocast


def test_one_crop_per_pass_is_never_probed(monkeypatch):
    """At the CPU default (one crop per pass) bfloat16 gains nothing: no probe, no first-run cost."""
    from napari_cass.engine import _precision

    monkeypatch.delenv(_precision.PRECISION_ENV, raising=False)
    monkeypatch.setattr(_precision, "cpu_has_native_bf16", lambda: True)
    calls = []
    model = torch.nn.Linear(3, 3)
    choice = _precision.choose_cpu_precision("vfm-test-batch1", calls.append, model, batch=1)
    assert choice.dtype is None and calls == [] and "crop(s) per pass" in choice.reason
