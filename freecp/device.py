"""Checking a ``--device`` before any model is built: a typo or a missing GPU is one line, at once.

``parse_device`` needs no torch, so a malformed name is reported before the heavy imports;
``check_device`` then asks torch whether that device exists on this machine.
"""

from __future__ import annotations

import re

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


class DeviceError(ValueError):
    """A device that is malformed or not present; the message says what to use instead."""


def parse_device(text: str) -> str:
    """The device name normalised (``CUDA`` -> ``cuda``), or ``DeviceError`` for anything torch would not know."""
    name = text.strip().lower()
    if not _DEVICE.match(name):
        raise DeviceError(f"unknown device {text!r}; use cpu, cuda, cuda:N (a GPU index) or mps")
    return name


def check_device(name: str) -> None:
    """Raise ``DeviceError`` when ``name`` (already parsed) is not available on this machine."""
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA GPU is available to torch on this machine; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"numbered from 0")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps: Apple's MPS backend is not available here; use --device cpu")
