"""RandomFlipHorizontal and RandomCrop against numpy, with the draws made in needle's order."""

import numpy as np
import pytest

from needlec.data import RandomCrop, RandomFlipHorizontal

IMG = np.random.default_rng(0).uniform(size=(5, 7, 2))


def _crop_by_loop(img, sx, sy):
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    for i in range(h):
        for j in range(w):
            if 0 <= i + sx < h and 0 <= j + sy < w:
                out[i, j] = img[i + sx, j + sy]
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_matches_numpy(seed, p):
    np.random.seed(seed)
    flip = np.random.rand() < p
    follow = np.random.rand()
    expected = IMG[:, ::-1, :] if flip else IMG

    np.random.seed(seed)
    out = RandomFlipHorizontal(p)(IMG)
    np.testing.assert_array_equal(out, expected)
    assert np.random.rand() == follow  # exactly one draw
    if p == 1.0:
        np.testing.assert_array_equal(out[:, 0], IMG[:, -1])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("padding", [1, 3, 6])
def test_crop_matches_a_loop(seed, padding):
    np.random.seed(seed)
    sx, sy = np.random.randint(low=-padding, high=padding + 1, size=2)
    follow = np.random.rand()

    np.random.seed(seed)
    out = RandomCrop(padding)(IMG)
    assert out.shape == IMG.shape
    np.testing.assert_array_equal(out, _crop_by_loop(IMG, sx, sy))
    assert np.random.rand() == follow


def test_crop_shifts_rows_then_columns():
    img = np.arange(9.0).reshape(3, 3, 1)
    np.random.seed(0)  # randint(-2, 3, size=2) gives [2, -2] for seed 0
    assert np.random.randint(-2, 3, size=2).tolist() == [2, -2]
    np.random.seed(0)
    out = RandomCrop(2)(img)[..., 0]
    assert out.tolist() == [[0, 0, 6], [0, 0, 0], [0, 0, 0]]


def test_crop_default_padding_is_three():
    assert RandomCrop().padding == 3 and RandomFlipHorizontal().p == 0.5
