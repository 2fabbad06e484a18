"""Tests for uniloss.experiments.augment: batched crops/flips against slow references."""

import pytest
import torch

from uniloss.experiments.augment import (
    crop_with_offsets,
    normalize,
    random_crop,
    random_crop_offsets,
    random_hflip,
)


def _slow_crop(images, offsets, padding):
    """Per-sample reference: pad each image with zeros and slice."""
    n, c, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(n):
        padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=images.dtype)
        padded[:, padding : padding + h, padding : padding + w] = images[i]
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[:, dy : dy + h, dx : dx + w]
    return out


@pytest.mark.parametrize("padding,shape", [(4, (16, 3, 32, 32)), (2, (9, 1, 28, 28)), (3, (5, 2, 7, 11))])
def test_random_crop_matches_slow_reference(padding, shape):
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    out, offsets = random_crop(images, padding=padding, generator=torch.Generator().manual_seed(7), return_offsets=True)
    assert out.shape == images.shape and offsets.shape == (shape[0], 2) and offsets.dtype == torch.long
    assert offsets.min() >= 0 and offsets.max() <= 2 * padding
    torch.testing.assert_close(out, _slow_crop(images, offsets, padding), rtol=0, atol=0)
    # the same seed reproduces the offsets through the public helper
    again = random_crop_offsets(shape[0], padding, torch.Generator().manual_seed(7))
    assert torch.equal(again, offsets)
    torch.testing.assert_close(crop_with_offsets(images, again, padding), out, rtol=0, atol=0)


def test_random_crop_offsets_are_independent_and_cover_range():
    off = random_crop_offsets(4000, padding=4, generator=torch.Generator().manual_seed(0))
    for k in range(2):
        counts = torch.bincount(off[:, k], minlength=9)
        assert counts.numel() == 9 and (counts > 300).all()
    assert len({tuple(r.tolist()) for r in off}) == 81  # dy and dx vary separately


def test_random_crop_shifts_a_single_pixel():
    n, h, w, p = 64, 10, 12, 3
    images = torch.zeros(n, 2, h, w)
    y0, x0 = 4, 5
    images[:, :, y0, x0] = torch.arange(1, n + 1, dtype=torch.float32)[:, None]
    out, off = random_crop(images, padding=p, generator=torch.Generator().manual_seed(3), return_offsets=True)
    for i in range(n):  # test-side loop only
        y, x = y0 + p - int(off[i, 0]), x0 + p - int(off[i, 1])
        assert 0 <= y < h and 0 <= x < w  # pixel is >= p away from borders here
        expected = torch.zeros(2, h, w)
        expected[:, y, x] = i + 1
        assert torch.equal(out[i], expected)


def test_random_crop_content_and_zero_border():
    images = torch.ones(50, 1, 8, 8)
    out, off = random_crop(images, padding=4, generator=torch.Generator().manual_seed(0), return_offsets=True)
    # number of surviving ones = overlap of the shifted window with the image
    shift = (off - 4).abs()
    assert torch.equal(out.sum(dim=(1, 2, 3)).long(), ((8 - shift[:, 0]) * (8 - shift[:, 1])))


def test_random_crop_padding_zero_is_identity_and_copy():
    images = torch.rand(3, 3, 5, 5)
    out = random_crop(images, padding=0)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


def test_random_crop_determinism_and_dtype():
    images = torch.rand(20, 3, 16, 16, dtype=torch.float64)
    a = random_crop(images, generator=torch.Generator().manual_seed(5))
    b = random_crop(images, generator=torch.Generator().manual_seed(5))
    c = random_crop(images, generator=torch.Generator().manual_seed(6))
    assert a.dtype == torch.float64 and torch.equal(a, b) and not torch.equal(a, c)


def test_random_crop_rejects_bad_input():
    with pytest.raises(ValueError):
        random_crop(torch.rand(3, 8, 8))
    with pytest.raises(ValueError):
        crop_with_offsets(torch.rand(2, 1, 8, 8), torch.zeros(3, 2, dtype=torch.long))


def test_random_hflip_matches_torch_flip_for_selected_samples():
    images = torch.rand(40, 3, 6, 7)
    out, mask = random_hflip(images, p=0.5, generator=torch.Generator().manual_seed(0), return_mask=True)
    assert mask.dtype == torch.bool and mask.shape == (40,)
    assert 0 < int(mask.sum()) < 40
    torch.testing.assert_close(out[mask], torch.flip(images[mask], dims=[-1]), rtol=0, atol=0)
    torch.testing.assert_close(out[~mask], images[~mask], rtol=0, atol=0)


def test_random_hflip_probability_and_extremes():
    images = torch.rand(4, 1, 3, 3)
    assert torch.equal(random_hflip(images, p=0.0), images)
    assert torch.equal(random_hflip(images, p=1.0), torch.flip(images, dims=[3]))
    _, mask = random_hflip(torch.zeros(5000, 1, 1, 2), p=0.3, generator=torch.Generator().manual_seed(1), return_mask=True)
    assert abs(mask.float().mean().item() - 0.3) < 0.03
    with pytest.raises(ValueError):
        random_hflip(images, p=1.5)


def test_random_hflip_determinism():
    images = torch.rand(30, 2, 4, 4)
    a = random_hflip(images, generator=torch.Generator().manual_seed(9))
    b = random_hflip(images, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_normalize():
    images = torch.rand(4, 3, 5, 5)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = normalize(images, mean, std)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (images[:, c] - mean[c]) / std[c])
    torch.testing.assert_close(normalize(images, 0.5, 0.5), images * 2 - 1)
    torch.testing.assert_close(normalize(images, torch.tensor(mean), torch.tensor(std)), out)
    with pytest.raises(ValueError):
        normalize(images, (0.1, 0.2), (1.0, 1.0))
    with pytest.raises(ValueError):
        normalize(images, 0.0, 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_with_cpu_generator():
    images = torch.rand(8, 3, 12, 12)
    ref = random_hflip(random_crop(images, generator=torch.Generator().manual_seed(0)), generator=torch.Generator().manual_seed(1))
    out = random_hflip(
        random_crop(images.cuda(), generator=torch.Generator().manual_seed(0)),
        generator=torch.Generator().manual_seed(1),
    )
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=0)
