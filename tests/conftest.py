"""Test-wide settings."""

from __future__ import annotations

import os
import tempfile

# compiled code is cached on disk in a directory of this run's own: the tests never read (or
# fill) the user's cache, and every run compiles what it tests at least once
os.environ.setdefault("NEEDLEC_CACHE_DIR", tempfile.mkdtemp(prefix="needlec-test-cache-"))
