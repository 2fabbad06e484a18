"""Batch image augmentations in plain torch (no torchvision, no per-sample Python loop).

All functions take a float batch ``[N, C, H, W]`` on any device and an optional
:class:`torch.Generator` for reproducibility. Random numbers are drawn on the generator's device
(CPU when no generator is given, from torch's global RNG) and then moved to the images' device,
so a CPU generator can drive augmentations of CUDA batches.

Example (the standard CIFAR training augmentation)::

    >>> import torch
    >>> from uniloss.experiments.augment import random_crop, random_hflip, normalize
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(8, 3, 32, 32)
    >>> x = random_hflip(random_crop(x, padding=4, generator=g), generator=g)
    >>> x = normalize(x, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
    >>> x.shape
    torch.Size([8, 3, 32, 32])
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop", "random_crop_offsets", "crop_with_offsets", "random_hflip", "normalize"]


def _check_batch(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"expected a [N, C, H, W] tensor, got shape {tuple(getattr(images, 'shape', ()))}")


def _rng_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def random_crop_offsets(n: int, padding: int = 4, generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw the per-sample crop offsets that :func:`random_crop` uses.

    Returns a ``[n, 2]`` int64 tensor on the generator's device (CPU by default) of
    ``(dy, dx)``, each uniform in ``0 .. 2 * padding``: sample ``i`` is cropped as
    ``padded[i, :, dy:dy + H, dx:dx + W]`` of the zero-padded image, i.e. the content moves by
    ``(padding - dy, padding - dx)`` pixels. Calling it with a generator in the same state as
    :func:`random_crop` reproduces that call's offsets.

    Example::

        >>> off = random_crop_offsets(5, padding=4, generator=torch.Generator().manual_seed(0))
        >>> off.shape, bool(((off >= 0) & (off <= 8)).all())
        (torch.Size([5, 2]), True)
    """
    if padding < 0:
        raise ValueError("padding must be >= 0")
    return torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=_rng_device(generator))


def crop_with_offsets(images: Tensor, offsets: Tensor, padding: int = 4) -> Tensor:
    """Crop each image of a zero-padded batch at its own offset (deterministic part of
    :func:`random_crop`).

    Args:
        images: ``[N, C, H, W]``.
        offsets: ``[N, 2]`` integer ``(dy, dx)`` in ``0 .. 2 * padding`` (any device).
        padding: zero padding added on every side before cropping.

    Returns:
        ``[N, C, H, W]``: ``out[i] = pad(images[i])[:, dy_i:dy_i + H, dx_i:dx_i + W]``.
        Implemented with two batched ``gather`` calls, no loop over samples.

    Example::

        >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
        >>> crop_with_offsets(x, torch.tensor([[2, 0]]), padding=1)[0, 0]
        tensor([[ 0.,  4.,  5.,  6.],
                [ 0.,  8.,  9., 10.],
                [ 0., 12., 13., 14.],
                [ 0.,  0.,  0.,  0.]])
    """
    _check_batch(images)
    n, c, h, w = images.shape
    offsets = torch.as_tensor(offsets).to(device=images.device, dtype=torch.long)
    if offsets.shape != (n, 2):
        raise ValueError(f"offsets must have shape [{n}, 2], got {tuple(offsets.shape)}")
    if padding == 0:
        return images.clone()
    padded = F.pad(images, (padding, padding, padding, padding))  # [N, C, H+2p, W+2p]
    rows = offsets[:, 0:1] + torch.arange(h, device=images.device)  # [N, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=images.device)  # [N, W]
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_crop(
    images: Tensor,
    padding: int = 4,
    generator: Optional[torch.Generator] = None,
    return_offsets: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Random translation by zero-padding ``padding`` pixels and cropping back to ``H x W``,
    with an independent offset per sample (the standard CIFAR "pad 4 + random crop 32").

    Args:
        images: float ``[N, C, H, W]`` on any device.
        padding: zero padding on every side; offsets are uniform in ``0 .. 2 * padding``.
        generator: optional :class:`torch.Generator` (any device) for reproducibility.
        return_offsets: also return the ``[N, 2]`` ``(dy, dx)`` offsets (on the images' device).

    Returns:
        the cropped batch ``[N, C, H, W]`` (a new tensor), or ``(cropped, offsets)``.
        ``cropped[i, :, y, x] == images[i, :, y + dy - padding, x + dx - padding]`` where that
        index is inside the image, 0 elsewhere.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> out, off = random_crop(torch.rand(4, 3, 32, 32), padding=4, generator=g, return_offsets=True)
        >>> out.shape, off.shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4, 2]))
    """
    _check_batch(images)
    offsets = random_crop_offsets(images.shape[0], padding, generator).to(images.device)
    out = crop_with_offsets(images, offsets, padding)
    return (out, offsets) if return_offsets else out


def random_hflip(
    images: Tensor,
    p: float = 0.5,
    generator: Optional[torch.Generator] = None,
    return_mask: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Flip each image left-right independently with probability ``p``.

    Args:
        images: float ``[N, C, H, W]`` on any device.
        p: flip probability.
        generator: optional :class:`torch.Generator` (any device) for reproducibility.
        return_mask: also return the ``[N]`` bool mask of flipped samples (images' device),
            e.g. to flip keypoint targets consistently.

    Returns:
        ``[N, C, H, W]`` (a new tensor) with ``out[i] = images[i].flip(-1)`` where the mask is
        true, or ``(out, mask)``.

    Example::

        >>> x = torch.arange(3.).reshape(1, 1, 1, 3)
        >>> random_hflip(x, p=1.0)
        tensor([[[[2., 1., 0.]]]])
    """
    _check_batch(images)
    if not 0.0 <= p <= 1.0:
        raise ValueError("p must be in [0, 1]")
    mask = (torch.rand(images.shape[0], generator=generator, device=_rng_device(generator)) < p).to(images.device)
    out = torch.where(mask[:, None, None, None], images.flip(-1), images)
    return (out, mask) if return_mask else out


def normalize(
    images: Tensor,
    mean: Union[float, Sequence[float], Tensor],
    std: Union[float, Sequence[float], Tensor],
) -> Tensor:
    """Per-channel standardisation ``(images - mean[c]) / std[c]``.

    Args:
        images: float ``[N, C, H, W]`` on any device.
        mean, std: a scalar or ``C`` values (sequence or tensor).

    Returns:
        a new ``[N, C, H, W]`` tensor of the images' dtype and device.

    Example::

        >>> normalize(torch.ones(2, 3, 4, 4), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))[0, :, 0, 0]
        tensor([1.0000, 2.0000, 0.5000])
    """
    _check_batch(images)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).reshape(-1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).reshape(-1)
    c = images.shape[1]
    for name, t in (("mean", m), ("std", s)):
        if t.numel() not in (1, c):
            raise ValueError(f"{name} must be a scalar or have {c} values, got {t.numel()}")
    if bool((s == 0).any()):
        raise ValueError("std must be non-zero")
    return (images - m.reshape(1, -1, 1, 1)) / s.reshape(1, -1, 1, 1)
