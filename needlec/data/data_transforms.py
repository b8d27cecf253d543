"""needle's image transforms, on H x W x C numpy arrays.

Each call draws from numpy's global generator exactly as needle does: `RandomFlipHorizontal`
one `np.random.rand()`, `RandomCrop` one `np.random.randint(-padding, padding + 1, size=2)`.
"""

from __future__ import annotations

import numpy as np


class Transform:
    """A callable on one H x W x C image."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The transformed image (subclasses define it)."""
        raise NotImplementedError


class RandomFlipHorizontal(Transform):
    """Mirror the image left-right (along W) with probability `p`.

    >>> img = np.arange(6.0).reshape(1, 3, 2)
    >>> RandomFlipHorizontal(p=1.0)(img)[0].tolist()
    [[4.0, 5.0], [2.0, 3.0], [0.0, 1.0]]
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """`img` (H, W, C) mirrored along W with probability p (one `np.random.rand()` draw),
        else `img` itself."""
        flip_img = np.random.rand() < self.p
        return img[:, ::-1, :] if flip_img else img


class RandomCrop(Transform):
    """Zero-pad H and W by `padding`, then crop H x W back out at a random shift.

    With shifts `(sx, sy)` drawn from `[-padding, padding]`, the result is
    `out[i, j] = img[i + sx, j + sy]` where that lies inside the image, else 0.

    >>> np.random.seed(0)
    >>> RandomCrop(padding=2)(np.ones((3, 3, 1)))[..., 0].astype(int).tolist()
    [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    """

    def __init__(self, padding: int = 3) -> None:
        self.padding = padding

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """`img` (H, W, ...) shifted by a random (sx, sy) in [-padding, padding] (one
        `np.random.randint(..., size=2)` draw), zero-filled where it moved off the edge."""
        shift_x, shift_y = np.random.randint(low=-self.padding, high=self.padding + 1, size=2)
        p = self.padding
        h, w = img.shape[0], img.shape[1]
        pad = [(p, p), (p, p)] + [(0, 0)] * (img.ndim - 2)
        padded = np.pad(img, pad)
        return padded[p + shift_x : p + shift_x + h, p + shift_y : p + shift_y + w]
