"""Counter-based random numbers keyed by (seed, perturbation, severity, image index).

A sequential generator would make an image's draw depend on its position in the batch,
so results would change with the batch size. Hashing the image index instead gives every
image the same numbers however the test set is split, on any device (integer ops only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> is arithmetic on int64; mask to make it the logical shift splitmix64 needs
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def derive_key(seed: int, *parts: object) -> int:
    """A 63-bit key from a seed and names, stable across processes and platforms."""
    text = "\x1f".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class ImageRandom:
    """Per-image random draws for one (seed, perturbation, severity)."""

    key: int
    indices: torch.Tensor  # (N,) int64 test-set positions of the batch's images

    def uniform(self, *shape: int, stream: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, *shape) values in [0, 1); each `stream` is an independent set of draws."""
        per_image = 1
        for size in shape:
            per_image *= size
        offsets = torch.arange(per_image, device=self.indices.device, dtype=torch.int64)
        counters = self.indices.to(torch.int64).unsqueeze(1) * per_image + offsets
        stream_key = splitmix64(torch.tensor(self.key ^ (stream * _GOLDEN), dtype=torch.int64))
        bits = splitmix64(counters ^ stream_key.to(counters.device))
        unit = _shift_right(bits, 11).to(torch.float64) * (1.0 / (1 << 53))
        return unit.to(dtype).view(len(self.indices), *shape)

    def sign(self, stream: int = 0) -> torch.Tensor:
        """(N,) values of -1 or +1 with equal chance."""
        return torch.where(self.uniform(stream=stream) < 0.5, -1.0, 1.0)
