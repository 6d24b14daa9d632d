"""Augmentation of whole batches of tensors (no per-sample PIL work).

Flip and translation are vectorised over the batch; random erasing and mixup/cutmix
come from timm. All randomness draws from the run's seeded generators.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing

from finch.config import AugmentConfig, RandAugmentConfig


def normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` → float, scaled to [0, 1] and standardised per channel."""
    return (x_uint8.float() / 255.0 - mean) / std


def black_level(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """What raw 0 (black) becomes after :func:`normalise`: ``-mean / std`` per channel."""
    return -mean / std


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    mask = torch.rand(x.shape[0], generator=generator, device="cpu") < 0.5
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)


def random_translate(
    x: torch.Tensor, max_shift: int, generator: torch.Generator, fill: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` whole pixels; the uncovered band is ``fill``
    (a number, or per channel, shaped ``[1, C, 1, 1]``)."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator, device="cpu")
    m = max_shift
    padded = torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand(b, c, h + 2 * m, w + 2 * m).clone()
    padded[:, :, m : m + h, m : m + w] = x
    rows = (torch.arange(h)[None, :] + max_shift - shifts[:, :1]).to(x.device)  # [B, H]
    cols = (torch.arange(w)[None, :] + max_shift - shifts[:, 1:]).to(x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indexing: [B, H, W, C] → back to [B, C, H, W]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class TensorRandAugment:
    """RandAugment (torchvision's operations and magnitudes) on a uint8 batch ``[B, C, H, W]``,
    each image with its own random operations; draws from torch's seeded global generator."""

    def __init__(self, cfg: RandAugmentConfig):
        from torchvision.transforms import v2

        self.op = v2.RandAugment(num_ops=cfg.num_ops, magnitude=cfg.magnitude)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        if x_uint8.dtype != torch.uint8:
            raise TypeError("RandAugment works on images (uint8), not cached features; switch it off for probes")
        return torch.stack([self.op(img) for img in x_uint8])


class BatchAugment:
    """Train-time augmentation of a normalised float batch and its labels.

    ``black`` is what a raw 0 pixel becomes after normalisation (``-mean / std`` per channel,
    ``[1, C, 1, 1]``): translation fills the band it uncovers with it, as a shift of the raw
    image would (zero would be the mean: a grey band never seen at test time).
    Returns ``(images, targets)``; targets are class indices, or soft label
    distributions when mixup/cutmix is on.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        num_classes: int,
        label_smoothing: float,
        device: torch.device,
        black: torch.Tensor | float,
    ):
        self.cfg = cfg
        self.black = black
        self.erase = (
            RandomErasing(probability=cfg.erasing, mode="pixel", device=str(device)) if cfg.erasing > 0 else None
        )
        self.mix = (
            Mixup(
                mixup_alpha=cfg.mixup_alpha,
                cutmix_alpha=cfg.cutmix_alpha,
                prob=cfg.mix_prob,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            if cfg.mixing
            else None
        )

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.flip:
            x = random_flip(x, generator)
        x = random_translate(x, self.cfg.translate, generator, self.black)
        if self.erase is not None:
            x = self.erase(x)
        if self.mix is not None:
            x, y = self.mix(x, y)
        return x, y
