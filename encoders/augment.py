"""DrQ-style random-shift augmentation: pad each image by ``pad`` pixels (edge replicated), crop back at a random
integer offset. Implemented as one gather with clamped indices, so no padded copy is materialised and it works on
uint8 channels-last images directly.

For a shift (dy, dx) in [0, 2 * pad], output pixel (i, j) is input pixel
(clamp(i + dy - pad, 0, H - 1), clamp(j + dx - pad, 0, W - 1)), which is exactly the crop
``replicate_pad(image, pad)[dy:dy + H, dx:dx + W]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def sample_shifts(batch: int, pad: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Draw per-image offsets (B, 2) int64 (dy, dx), each uniform in [0, 2 * pad].

    With a ``generator`` the draw happens on the generator's device and is moved to ``device``; without one the
    global RNG of ``device`` is used (so ``torch.manual_seed`` makes it reproducible).
    """
    if generator is not None:
        shifts = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator, device=generator.device)
        return shifts.to(device) if device is not None else shifts
    return torch.randint(0, 2 * pad + 1, (batch, 2), device=device)


def shift_images(images: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image by its offset with edge replication.

    Args:
        images: (B, H, W, C) channels-last, any dtype (uint8 stays uint8).
        shifts: (B, 2) int64 offsets (dy, dx) in [0, 2 * pad] from :func:`sample_shifts`.
        pad: the padding the offsets were drawn for; offset ``pad`` is the identity.
    Returns:
        (B, H, W, C) tensor of the same dtype and device.
    """
    batch, height, width = images.shape[:3]
    shifts = shifts.to(images.device)
    rows = (torch.arange(height, device=images.device)[None, :] + shifts[:, :1] - pad).clamp_(0, height - 1)
    cols = (torch.arange(width, device=images.device)[None, :] + shifts[:, 1:] - pad).clamp_(0, width - 1)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    return images[batch_index, rows[:, :, None], cols[:, None, :]]


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random-shift (B, H, W, C) images by up to ``pad`` pixels each way; independent offset per image."""
    if pad == 0 or images.shape[0] == 0:
        return images
    return shift_images(images, sample_shifts(images.shape[0], pad, generator, images.device), pad)


def augment_batch(obs: Mapping[str, torch.Tensor], pads: Mapping[str, int],
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Return a copy of ``obs`` whose keys named in ``pads`` are random-shifted (other keys passed through).

    Useful to augment outside the encoder (e.g. once per batch); ``enc.augment_pads`` gives the encoder's pads.
    """
    return {key: random_shift(value, pads[key], generator) if key in pads else value for key, value in obs.items()}
