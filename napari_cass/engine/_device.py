"""Device choice: "auto" picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "DEVICE_CHOICES"]

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Validate a device request and return the device that will really be used.

    Raises ``ValueError`` with what to do when the requested device is not available.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                "CUDA was requested but no CUDA GPU is available to PyTorch "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). "
                "Use device='auto' or 'cpu', or install a CUDA build of PyTorch that matches your driver."
            )
        return torch.device(name)
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ValueError("Apple MPS was requested but is not available here. Use 'auto' or 'cpu'.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"Unknown device {device!r}: choose one of {', '.join(DEVICE_CHOICES)}.")
