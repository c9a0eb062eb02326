"""Normalisation and augmentation as batched tensor ops on the data's device.

The paper's CIFAR augmentation (Sec. 4.2): pad 4 pixels on each side, take a random crop
of the original size, flip horizontally with probability 1/2. Here every image of a batch
gets its own crop offset and flip, drawn from a seeded `torch.Generator`, and the crop and
flip are one gather, so a batch costs a handful of kernel launches on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in pixel units (0..255).

    Accumulated in float64 over chunks so a large split needs no float copy of itself.
    Returns two float32 tensors of shape (C,) on the images' device.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        total_sq += (part * part).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-6).sqrt()
    return mean.float(), std.float()


class Normalize:
    """uint8 (B, C, H, W) -> float32 (x - mean) / std, per channel."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = mean.view(1, -1, 1, 1)           # (1, C, 1, 1), pixel units
        self.inv_std = (1.0 / std).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.inv_std


def random_crop_flip(images: torch.Tensor, generator: torch.Generator,
                     padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Pad with zeros (the channel mean, once normalised), crop each image at its own random
    offset back to (H, W), and mirror a random half of the batch.

    images: (B, C, H, W) on the generator's device; returns a new tensor of the same shape.
    Same generator state -> same crops and flips.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))   # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
    rows = dy + torch.arange(height, device=device)                # (B, H)
    cols = torch.arange(width, device=device).expand(batch, width)  # (B, W)
    if flip:
        mirrored = torch.rand(batch, 1, generator=generator, device=device) < 0.5
        cols = torch.where(mirrored, width - 1 - cols, cols)
    cols = dx + cols
    batch_index = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    channel_index = torch.arange(channels, device=device).view(1, channels, 1, 1)
    return padded[batch_index, channel_index, rows.view(batch, 1, height, 1),
                  cols.view(batch, 1, 1, width)]
