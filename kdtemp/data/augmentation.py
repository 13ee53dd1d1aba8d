"""Random crop and horizontal flip on the device, drawn for a whole epoch up front.

Each seed draws its epoch's crop offsets and flips from its own generator (engine.loop.epoch_generator),
so a resumed run and a student trained alone or in a group see the same augmented images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EpochAugmentation:
    """Crop offsets and flips for every training sample of one epoch, drawn up front (no per-step
    host work)."""

    offsets: torch.Tensor  # (N, 2) int64, in [0, 2 * padding]
    flips: torch.Tensor  # (N,) bool
    padding: int
    fill: torch.Tensor  # (1, C, 1, 1): each channel's normalised black, on the device


def draw_augmentation(
    num_samples: int,
    generator: torch.Generator,
    device: torch.device,
    pad_value: tuple[float, ...],
    padding: int = 4,
) -> EpochAugmentation:
    offsets = torch.randint(0, 2 * padding + 1, (num_samples, 2), generator=generator)
    flips = torch.rand(num_samples, generator=generator) < 0.5
    fill = torch.tensor(pad_value, dtype=torch.float32).view(1, -1, 1, 1)
    return EpochAugmentation(offsets.to(device), flips.to(device), padding, fill.to(device))


def augment_batch(images: torch.Tensor, indices: torch.Tensor, plan: EpochAugmentation) -> torch.Tensor:
    """Random crop (padded with black in pixel space, as torchvision does) and horizontal flip of a
    (B, C, H, W) batch."""
    batch, channels, height, width = images.shape
    pad = plan.padding
    padded = images.new_empty(batch, channels, height + 2 * pad, width + 2 * pad)
    padded.copy_(plan.fill.to(images.dtype).expand_as(padded))
    padded[:, :, pad : pad + height, pad : pad + width] = images
    offsets = plan.offsets[indices]
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)  # (B, W)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    cropped = cropped.permute(0, 3, 1, 2)
    flips = plan.flips[indices].view(-1, 1, 1, 1)
    return torch.where(flips, cropped.flip(-1), cropped).contiguous()
