"""Compiled code on disk: a new process running the same step loads machine code instead of
optimizing and compiling its LLVM module again.

An entry is of one of two kinds. An object entry (`.o`) is the object code MCJIT produced for one
module; its key hashes the module's text (as rendered, before optimization), the target CPU's
name and features, the pass pipeline, and the versions of needlec, llvmlite and LLVM, so a
changed program, CPU or toolchain never finds an old entry. A program entry (`.program`, written
by `programcache`) maps a traced graph to what the passes and the code generator made of it,
so a new process tracing the same step skips both. Compiled code calls BLAS and the runtime by
name (bound when it is loaded), so an entry holds no addresses of the process that wrote it. Each file starts with a magic string, the key and the SHA-256 of the
object code; a file that is truncated, damaged or written for another key is compiled afresh and
rewritten, never loaded. Writes go to a temporary file renamed into place, so concurrent
processes never see half an entry.

The directory is `NEEDLEC_CACHE_DIR`, else `$XDG_CACHE_HOME/needlec`, else `~/.cache/needlec`;
`NEEDLEC_DISK_CACHE=0` turns the cache off. It holds at most `NEEDLEC_CACHE_MB` megabytes
(default 1024): after a write that takes it over, the entries used least recently (a hit
touches its file) are deleted until it is back under nine tenths of that.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

MAGIC = b"needlec-object-v1\n"
KINDS = {
    "o": MAGIC,
    "program": b"needlec-program-v1\n",
    "tune": b"needlec-tune-v1\n",  # a CUDA matmul's measured tiling (cuda/autotune.py)
}  # file suffix -> the magic its files start with


@dataclass
class Stats:
    """What the cache did in this process (hits, misses, entries refused as damaged)."""

    hits: int = 0
    misses: int = 0
    damaged: int = 0
    writes: int = 0


stats = Stats()  # object entries
program_stats = Stats()  # program entries


def enabled() -> bool:
    return os.environ.get("NEEDLEC_DISK_CACHE", "1").strip() not in ("0", "off", "false")


def directory() -> Path:
    """Where entries live."""
    env = os.environ.get("NEEDLEC_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "needlec"


def limit_bytes() -> int:
    """The cache's size bound, from `NEEDLEC_CACHE_MB` (default 1024 MB)."""
    raw = os.environ.get("NEEDLEC_CACHE_MB", "").strip()
    try:
        mb = float(raw) if raw else 1024.0
    except ValueError:
        raise ValueError(f"NEEDLEC_CACHE_MB must be a number of megabytes, not {raw!r}") from None
    return max(0, int(mb * (1 << 20)))


def key(module_text: str, cpu: str, features: str, pipeline: str) -> str:
    """The entry key of a module compiled for a CPU by this toolchain and pass pipeline."""
    from ... import __version__

    h = hashlib.sha256()
    for part in (
        module_text,
        cpu,
        features,
        pipeline,
        __version__,
        llvmlite.__version__,
        ".".join(map(str, llvm.llvm_version_info)),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def path_of(k: str, kind: str = "o") -> Path:
    return directory() / k[:2] / f"{k}.{kind}"


def load(k: str, kind: str = "o") -> bytes | None:
    """The body of the entry of `kind` stored under `k`, or None (missing, or refused as
    damaged or foreign)."""
    if not enabled():
        return None
    st = stats if kind == "o" else program_stats
    magic = KINDS[kind]
    path = path_of(k, kind)
    try:
        data = path.read_bytes()
    except OSError:
        st.misses += 1
        return None
    head = len(magic) + 64 + 1 + 64 + 1
    ok = len(data) >= head and data.startswith(magic)
    if ok:
        got_key = data[len(magic) : len(magic) + 64].decode("ascii", "replace")
        digest = data[len(magic) + 65 : len(magic) + 129].decode("ascii", "replace")
        body = data[head:]
        ok = got_key == k and hashlib.sha256(body).hexdigest() == digest and len(body) > 0
    if not ok:
        st.damaged += 1
        st.misses += 1
        return None
    st.hits += 1
    try:
        os.utime(path)  # used now: the last to be evicted
    except OSError:
        pass
    return body


def store(k: str, obj: bytes, kind: str = "o") -> None:
    """Write `obj` under `k` as an entry of `kind` (atomically; a failure to write only costs
    the next process a compile)."""
    if not enabled():
        return
    path = path_of(k, kind)
    digest = hashlib.sha256(obj).hexdigest()
    data = KINDS[kind] + k.encode() + b"\n" + digest.encode() + b"\n" + obj
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        (stats if kind == "o" else program_stats).writes += 1
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return
    evict(keep=path)


def evict(keep: Path | None = None) -> int:
    """Delete the least recently used entries while the cache is over its bound (down to nine
    tenths of it; never `keep`, the entry just written). Returns how many were deleted."""
    bound = limit_bytes()
    entries = []
    for f in directory().glob("??/*.*"):
        if f.name.startswith(".") or f.suffix[1:] not in KINDS:
            continue
        try:
            st = f.stat()
        except OSError:  # another process removed it
            continue
        entries.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in entries)
    if total <= bound:
        return 0
    removed = 0
    for _, size, f in sorted(entries, key=lambda e: e[0]):
        if total <= bound * 9 // 10:
            break
        if keep is not None and f == keep:
            continue
        try:
            f.unlink()
        except OSError:
            continue
        total -= size
        removed += 1
    return removed


__all__ = [
    "directory",
    "enabled",
    "evict",
    "key",
    "limit_bytes",
    "load",
    "program_stats",
    "stats",
    "store",
]
