"""Per-encoder precision on the CPU: bfloat16 autocast only where it is measured faster.

Why a probe and not a rule: on a CPU with native bfloat16 (Intel AMX), DINO ViT-B/8 on 8
crops ran 2.2x faster under ``torch.autocast("cpu", torch.bfloat16)`` while CLIP ViT-B/16
ran 5x slower (its attention path falls back to slow bfloat16 kernels). Which encoder
gains depends on the CPU, the PyTorch build and the model, so the first use of each
encoder times a few forward passes in float32 and in bfloat16 on one crop and keeps the
faster one, with a margin, so the choice is never slower than float32. The result is
cached per process for (encoder, architecture, device, threads).

Settings (``NAPARI_CASS_PRECISION``): ``auto`` (default, the probe), ``fp32`` (always
float32: bit-reproducible runs) or ``bf16`` (always bfloat16 on the CPU). A Segmenter built
with ``amp=False`` or ``reference_quirks=True`` never autocasts.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "PRECISION_ENV",
    "PRECISION_SETTINGS",
    "PrecisionChoice",
    "cpu_autocast",
    "cpu_has_native_bf16",
    "precision_choices",
    "precision_setting",
    "probe_precision",
]

PRECISION_ENV = "NAPARI_CASS_PRECISION"
PRECISION_SETTINGS = ("auto", "fp32", "bf16")

# bfloat16 must beat float32 by this factor to be chosen: timing noise never makes it slower.
_MARGIN = 0.8
# Encoders faster than this per probe pass in float32 are not worth a probe (tiny test models):
# they stay float32, which also keeps tests deterministic.
_MIN_PROBE_SECONDS = 0.05
# Measured on an AMX CPU: DINO ViT-B/8 at one crop per pass runs as fast in float32 as in
# bfloat16 (1.75 s both), so the probe (seconds on the first run) is skipped below this batch.
_MIN_PROBE_BATCH = 4
_PROBE_SIZE = 224  # one crop, the size the encoders run at

_CHOICES: dict[tuple, PrecisionChoice] = {}


@dataclass(frozen=True)
class PrecisionChoice:
    """What the probe chose for one encoder, and why.

    Attributes
    ----------
    dtype : torch.dtype or None
        ``torch.bfloat16`` to autocast, ``None`` for plain float32.
    fp32_seconds, bf16_seconds : float or None
        Best probe time per forward pass (``None`` where not measured).
    reason : str
        One line for logs and benchmarks.
    """

    dtype: torch.dtype | None
    fp32_seconds: float | None
    bf16_seconds: float | None
    reason: str


def precision_setting() -> str:
    """The user's setting from ``NAPARI_CASS_PRECISION`` (``auto`` when unset)."""
    value = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if value not in PRECISION_SETTINGS:
        raise ValueError(
            f"{PRECISION_ENV}={value!r} is not a precision setting: use one of "
            f"{', '.join(PRECISION_SETTINGS)} (fp32 forces float32)."
        )
    return value


def cpu_has_native_bf16() -> bool | None:
    """True/False from the Linux CPU flags (AMX or AVX512-BF16); None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        return None
    return None


def precision_choices() -> dict[tuple, PrecisionChoice]:
    """The choices made so far in this process (key: encoder, architecture, size, device, threads, batch, setting)."""
    return dict(_CHOICES)


def cpu_autocast(name: str, forward: Callable[[torch.Tensor], object], model: torch.nn.Module, batch: int = 1):
    """The autocast context for one CPU encoder: bfloat16 where it is measured faster.

    Parameters
    ----------
    name : str
        ``"clip"`` or ``"vfm"`` (part of the cache key and the report).
    forward : callable
        Runs the encoder's part that the context will wrap on a ``(batch, 3, 224, 224)``
        batch (used only by the first, probing, call).
    model : torch.nn.Module
        The encoder, for the cache key (architecture and size).
    batch : int
        Crops per forward pass in the real runs (the probe times the same).
    """
    choice = choose_cpu_precision(name, forward, model, batch)
    return torch.autocast("cpu", dtype=choice.dtype) if choice.dtype is not None else nullcontext()


def choose_cpu_precision(
    name: str, forward: Callable[[torch.Tensor], object], model: torch.nn.Module, batch: int = 1
) -> PrecisionChoice:
    """Decide (once per process and key) between float32 and bfloat16 for a CPU encoder."""
    setting = precision_setting()
    n_params = sum(p.numel() for p in model.parameters())
    key = (name, type(model).__name__, n_params, "cpu", torch.get_num_threads(), batch, setting)
    if key in _CHOICES:
        return _CHOICES[key]
    if setting == "fp32":
        choice = PrecisionChoice(None, None, None, f"{PRECISION_ENV}=fp32")
    elif setting == "bf16":
        choice = PrecisionChoice(torch.bfloat16, None, None, f"{PRECISION_ENV}=bf16")
    elif cpu_has_native_bf16() is False:
        choice = PrecisionChoice(None, None, None, "no native bfloat16 on this CPU (no AMX / AVX512-BF16)")
    elif batch < _MIN_PROBE_BATCH:
        choice = PrecisionChoice(None, None, None, f"{batch} crop(s) per pass: bfloat16 is not faster "
                                 f"below {_MIN_PROBE_BATCH} (batch_size >= {_MIN_PROBE_BATCH} probes it)")
    else:
        choice = probe_precision(forward, batch)
    _CHOICES[key] = choice
    return choice


@torch.inference_mode()
def probe_precision(
    forward: Callable[[torch.Tensor], object],
    batch: int = 1,
    rounds: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> PrecisionChoice:
    """Time ``forward`` on ``batch`` crops in float32 and bfloat16, interleaved.

    One warm-up pass per precision (one-time kernel setup), then alternating timed passes
    so that both see the same machine load; the best time of each is compared. Stops
    after the first round when the answer is clear (bfloat16 under 0.6x or over 1.2x).
    ``clock`` is the timer: wall time, what the user waits for (CPU time is no proxy: it
    misses threads that idle or wait on memory). On a machine loaded by other processes
    the times are noisy; the margin then errs towards float32. Tests pass a simulated clock.
    """
    sample = torch.randn(batch, 3, _PROBE_SIZE, _PROBE_SIZE, generator=torch.Generator().manual_seed(0))

    def once(bf16: bool) -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        start = clock()
        with ctx:
            forward(sample)
        return clock() - start

    once(False)
    t32 = [once(False)]
    if t32[0] < _MIN_PROBE_SECONDS:
        return PrecisionChoice(None, t32[0], None, f"float32 pass takes {t32[0] * 1e3:.0f} ms: not worth bfloat16")
    once(True)
    t16 = [once(True)]
    for _ in range(rounds - 1):
        if not 0.6 < min(t16) / min(t32) < 1.2:
            break
        t32.append(once(False))
        t16.append(once(True))
    best32, best16 = min(t32), min(t16)
    times = f"{best32:.2f} s float32, {best16:.2f} s bfloat16 per pass of {batch}"
    if best16 < _MARGIN * best32:
        return PrecisionChoice(torch.bfloat16, best32, best16, f"bfloat16 {best32 / best16:.1f}x faster ({times})")
    return PrecisionChoice(None, best32, best16, f"bfloat16 not faster: {best16 / best32:.1f}x the time ({times})")
