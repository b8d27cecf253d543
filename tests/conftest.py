"""Test-wide settings."""

from __future__ import annotations

import os
import tempfile

import pytest

# compiled code is cached on disk in a directory of this run's own: the tests never read (or
# fill) the user's cache, and every run compiles what it tests at least once
os.environ.setdefault("NEEDLEC_CACHE_DIR", tempfile.mkdtemp(prefix="needlec-test-cache-"))


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Each device a test runs on: `cpu()` everywhere, `cuda()` where a GPU and pycuda are
    present (skipped elsewhere, so GPU-less runs list what a GPU machine runs)."""
    import needlec as nc

    dev = nc.cpu() if request.param == "cpu" else nc.cuda()
    if not dev.enabled():
        pytest.skip(f"{dev!r} is not enabled here (no GPU or no pycuda)")
    return dev
