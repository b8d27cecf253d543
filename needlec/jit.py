"""`jit` and `make_graph`: trace a Python function of tensors into a graph, cache it, run it.

The tracing and write-back machinery is `needlec.frontend.traced`; this module keeps the cache,
its guards, and the choice of what runs the optimized graph."""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import sys
import threading
import warnings
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import backend_ndarray as nd
from .autograd import Tensor
from .codegen import reference
from .codegen.backends import BACKENDS, Backend, compiled_backend, make_backend
from .distributed import check_same_program
from .frontend import guards, hit
from .frontend.hit import MISS, drawn, hit_key, take_seed
from .frontend.hit import traces as _traces
from .frontend.pytree import unflatten
from .frontend.trace import current
from .frontend.traced import (
    Traced,
    call_graph,
    call_signature,
    check_unaliased,
    donations,
    trace_difference,
    trace_function,
    write_back,
)
from .ir import Graph, Op
from .ir.graph import FusedGraph
from .ir.kernel import CostAnalysis, KernelGraph
from .ir.ops import user_frame
from .passes import Program, compile_program, optimize
from .passes.memory import MemoryAnalysis

# NEEDLEC_EXECUTE: compiled code (LLVM) by default; the two interpreters stay as oracles
_RETRACE_WARNING = 8  # traces of one function before a warning that something keeps changing
_CACHE_SIZE = 64  # traces one jitted function keeps (least recently used first out)
_ticks = itertools.count()  # cache use order (next() is atomic: hits take no lock)


class StaleTraceError(RuntimeError):
    """Check mode (`NEEDLEC_CHECK=1`, `jit(f, check=True)`): a fresh trace differs from the
    cached one, so something the function reads changed without a guard seeing it."""


def _debug(topic: str) -> bool:
    return topic in os.environ.get("NEEDLEC_DEBUG", "").split(",")


def _is_tensor(x) -> bool:
    return isinstance(x, Tensor)


class Lowered:
    """A traced and optimized function: its graph, printed IR and generated code."""

    _jit_opaque = True  # guard walks do not descend into compiled programs
    hit_plan = None  # how a cache hit runs it (frontend.hit), made on the first; False: generally

    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        n_results = traced.n_results
        self.execute = os.environ.get("NEEDLEC_EXECUTE", "compiled")
        self.execute = {"graph": "reference"}.get(self.execute, self.execute)
        if self.execute not in BACKENDS:
            raise ValueError(f"NEEDLEC_EXECUTE={self.execute!r}: use one of {', '.join(BACKENDS)}")
        self._backends: dict[str, Backend] = {}
        self._program: Program | None = None
        donate = donations(traced, n_results)
        # compiled: what an earlier process made of this very graph, when the disk holds it
        self._disk_key = _program_key(traced, donate) if self.execute == "compiled" else None
        warm = _load_program(self._disk_key) if self._disk_key is not None else None
        if warm is not None:
            self._program, executable = warm
            graph = self._program.graph
            self._backends["compiled"] = compiled_backend(executable)
            self._disk_key = None  # nothing to write back
        else:
            graph = optimize(traced.graph)  # the graph-to-graph steps; the rest on first use
        self._start = Program(graph, n_results, donate)
        self.graph = FusedGraph(graph, lambda: self.kernels)
        self._grads: dict = {}  # gradient graphs, made when a caller differentiates an output
        if self.execute != "reference" or any(_debug(t) for t in ("passes", "fusion")):
            self.program  # noqa: B018  (compile now: its debug output belongs to this trace)

    @property
    def program(self) -> Program:
        """The whole pipeline's result: remat plan, kernels, memory plan (made on first use)."""
        if self._program is None:
            self._program = compile_program(self._start.graph, start=self._start)
        return self._program

    @property
    def kernels(self) -> KernelGraph:
        """The fused loop-nest kernels (`.as_text()` prints them)."""
        return self.program.kernels

    def cost_analysis(self) -> CostAnalysis:
        """Flops and bytes moved per kernel and in total (`.as_text()` prints the table)."""
        return self.kernels.cost_analysis()

    def memory_analysis(self) -> MemoryAnalysis:
        """Arena size, peak live bytes, the sum of all intermediates, bytes of inputs and
        outputs, and bytes of parameters and state updated in place (`.as_text()`)."""
        return self.program.memory.analysis()

    def backend(self, name: str) -> Backend:
        """The executable of backend `name` for this program (made on first use)."""
        made = self._backends.get(name)
        if made is None:
            graph = self._start.graph
            if any(n.op is Op.ALLREDUCE for n in graph.nodes):  # ranks must reduce alike
                check_same_program(graph, f"jit({self.traced.trace.name})")
            target = self.program if name != "reference" else self._start
            made = self._backends[name] = make_backend(name, target)
            if name == "compiled" and self._disk_key is not None:
                from .codegen.llvm import programcache

                programcache.store(self._disk_key, self.program, made.executable)
                self._disk_key = None
        return made

    @property
    def executable(self):
        """The program compiled for this CPU through LLVM (made on first use)."""
        return self.backend("compiled").executable

    @property
    def schedule(self) -> str:
        """The loop nest of every kernel, printed (what the LLVM renderer reads)."""
        return self.executable.schedule_text()

    def as_text(self) -> str:
        """The optimized graph, printed (`.kernels.as_text()`: the fused kernels)."""
        return self.graph.as_text()

    def source(self, target: str = "llvm") -> str:
        """Generated code for `target`: "llvm" (the optimized LLVM module that runs),
        "llvm-unoptimized" (as rendered), "asm" (its machine code), "cuda" (every kernel as
        CUDA C, one translation unit) or "python" (the reference backend's straight-line numpy)."""
        if target == "python":
            return reference.source(self.graph)
        if target == "cuda":
            from .codegen.cuda.program import render_program

            return render_program(self.kernels).source
        if target in ("llvm", "llvm-unoptimized", "asm"):
            return self.executable.source(target)
        raise ValueError(
            f"source: no backend renders target {target!r}; "
            "available: 'llvm', 'llvm-unoptimized', 'asm', 'cuda', 'python'"
        )

    def __call__(self, leaves: Sequence[Tensor]) -> Any:
        traced = self.traced
        tensors = list(leaves) + traced.current_captures()
        device = _common_device(traced.trace.name, tensors)
        for obj, name in traced.scalars:  # hyperparameters: read now, so a schedule applies
            value = getattr(obj, name)
            if not isinstance(value, int | float | np.number) or isinstance(value, bool):
                raise TypeError(
                    f"{type(obj).__name__}.{name} = {value!r}: jit({traced.trace.name}) reads it as a "
                    "number at every call; set it to an int or a float"
                )
            tensors.append(np.array(value, dtype="float64"))  # an array: no tensor needed
        if traced.random:  # a new seed each call: fresh random numbers, reproducible
            tensors.append(np.array(take_seed(), dtype="int64"))
        if traced.arg_writes or traced.written:
            check_unaliased(traced, tensors, len(leaves))
        name = self.execute
        if name == "compiled" and device == nd.cpu_numpy():  # needle's numpy device: numpy
            name = "reference"
        if name == "compiled" and device == nd.cuda():  # the GPU: generated CUDA C
            name = "cuda"
        backend = self.backend(name)
        n_user = traced.n_results
        results = call_graph(
            self.graph, tensors, self._grads, backend.run, backend.fresh_outputs, n_user
        )
        write_back(traced.writes, results[n_user:], leaves)
        outs = iter(results[:n_user])
        n_out = n_user + len(traced.out_static)
        static = traced.out_static
        flat = [static[k] if k in static else next(outs) for k in range(n_out)]
        return unflatten(self.traced.out_tree, flat)


def _program_key(traced: Traced, donate: dict[int, int]) -> str | None:
    """The disk cache's key for the compiled form of a traced graph, or None where the cache
    is off, the graph has no content digest (an op holds a Python object) or an all-reduce, a pass was
    replaced in this process, or a debug topic asks to see the passes or the code generator
    run."""
    from .codegen.llvm import diskcache

    topics = ("passes", "fusion", "schedule", "fallback")
    if not diskcache.enabled() or any(_debug(t) for t in topics):
        return None
    from .codegen.llvm import programcache
    from .ir.digest import graph_digest

    if not programcache.pipeline_is_ours():
        return None
    if any(n.op is Op.ALLREDUCE for n in traced.graph.nodes):
        # its code depends on this process's MPI world (a communicator's handles bound when
        # compiled, or a copy in a world of one), and ranks check each other's program as
        # they compile: always compiled here (the object cache still spares LLVM's work)
        return None
    digest = graph_digest(traced.graph)
    return None if digest is None else programcache.key(digest, traced.n_results, donate)


def _load_program(key: str):
    """`(program, executable)` from the disk cache's program entry `key`, or None."""
    from .codegen.llvm import programcache

    return programcache.load(key)


def _common_device(name: str, tensors: Sequence[Tensor]):
    """The one device of a call's tensors (arguments and captured), as an eager op demands."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(
            f"jit({name}): inputs are on different devices {sorted(map(repr, devices))} "
            f"(at {user_frame()})"
        )
    return devices.pop() if devices else nd.default_device()


def _static_args(fn: Callable, nums: Sequence[int], names: Sequence[str]):
    """(argnums, argnames) completed from `fn`'s signature as JAX does: a name passed by position
    and a number passed by keyword are static too; a negative number counts from the end of the
    positional parameters (of the call's arguments when `fn` takes *args: still negative)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin: only what was given
        return tuple(nums), tuple(names)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in params if p.kind in kinds]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    n = len(positional)
    resolved = {i + n if i < 0 and not varargs else i for i in nums}
    names = set(names) | {positional[i] for i in resolved if 0 <= i < n}
    resolved |= {positional.index(k) for k in names if k in positional}
    return tuple(sorted(resolved)), tuple(sorted(names))


def _show_entry(entry) -> str:
    if entry[0] == "static":
        return repr(entry[2])
    tree, sig = entry
    return ", ".join(f"{dtype}{list(shape)}" for shape, dtype, *_ in sig) or str(tree)


def _key_change(old, new, labels: list[str]) -> str:
    """What differs between two cache keys (one entry per argument), in the user's words."""
    if old is None:
        return "new argument signature"
    if len(old) != len(new):
        return f"{len(old)} -> {len(new)} arguments"
    for label, a, b in zip(labels, old, new, strict=False):
        if a != b:
            try:
                if label.startswith("keyword"):
                    a, b = a[1], b[1]
                if a[0] != "static" and b[0] != "static" and a[0] != b[0]:
                    return f"{label}: its structure changed"
                return f"{label}: {_show_entry(a)} -> {_show_entry(b)}"
            except (TypeError, ValueError, IndexError):  # passed by position, then by name
                return f"{label} changed"
    return "new argument signature"


class _ArraysOutside:
    """Whether a numpy array a trace converts is reachable from the function's roots (its
    globals, closure, defaults and objects, and the globals of the code run so far): such an
    array is an input read at every call; one the function made is a constant."""

    def __init__(self, roots: list, recorder: guards.CodeRecorder) -> None:
        self.roots, self.recorder = roots, recorder
        self.ids: set[int] | None = None
        self.codes = -1  # how many code objects had run at the last walk

    def __call__(self, array: np.ndarray) -> bool:
        if len(self.recorder.codes) != self.codes:  # new code ran: it may read new globals
            self.codes = len(self.recorder.codes)
            roots = guards.merge(self.roots, self.recorder.roots())
            walked = guards.walk(roots, _is_tensor)
            self.ids = {id(x) for _, _, x in walked if isinstance(x, np.ndarray)}
        while isinstance(array, np.ndarray):  # a view (`W[:, :k]`) reads its base's memory
            if id(array) in self.ids:
                return True
            array = array.base
        return False


class Jitted:
    """A function compiled on first call for each abstract signature of its arguments."""

    def __init__(
        self,
        fn: Callable,
        static_argnums=(),
        static_argnames=(),
        cache_size: int = _CACHE_SIZE,
        check: bool | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"jit: expected a callable, got {type(fn).__name__} ({fn!r})")
        if cache_size < 1:
            raise ValueError(f"jit: cache_size must be at least 1, got {cache_size}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._given = (tuple(static_argnums), tuple(static_argnames))  # as the user wrote them
        self.static_argnums, self.static_argnames = _static_args(fn, *self._given)
        self._negative = any(i < 0 for i in self.static_argnums)  # fn takes *args
        self.max_cache_size = cache_size
        self.check = (
            os.environ.get("NEEDLEC_CHECK", "") not in ("", "0") if check is None else check
        )
        self._cache: dict = {}  # signature key -> ((Lowered, Guard), ...), most recent first
        self._used: dict = {}  # signature key -> when last used (for least-recently-used eviction)
        self._last_key = None  # the key of the last trace, to say what changed in the next
        self._reasons: deque = deque(maxlen=_RETRACE_WARNING)  # why the recent traces ran
        self._lock = threading.RLock()  # held while tracing (reentrant: lower() in a trace)
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self._roots = guards.roots(fn)
        self._bound: dict = {}  # id(instance) -> (a reader of the instance, its bound Jitted)
        self.trace_count = 0
        self._warned_large = False  # a guard that checks many objects warns once
        self._hits: dict = {}  # hit key (frontend.hit) -> cache key, for plain positional calls
        self._plain = not self.static_argnums and not self.static_argnames

    _jit_guard_attrs = ("fn",)  # a guard walk reads the function, not the cache

    def cache_size(self) -> int:
        """How many traces the cache holds now (at most `max_cache_size`)."""
        return sum(len(v) for v in list(self._cache.values()))

    def _statics(self, args) -> tuple:
        if not self._negative:
            return self.static_argnums
        return tuple(i % len(args) if i < 0 and args else i for i in self.static_argnums)

    def _lookup(self, key, leaves) -> tuple[Lowered | None, str | None]:
        """(a cached trace that fits this call, None) or (None, why none does)."""
        why = None
        for lowered, guard in self._cache.get(key, ()):
            traced = lowered.traced
            why = traced.stale_capture() or traced.stale_arguments(leaves) or guard.check()
            if why is None:
                self._used[key] = next(_ticks)
                return lowered, None
        return None, why

    def _entry(self, args, kwargs) -> tuple[Lowered, list, bool]:
        """(the trace for this call, the arguments' leaves, whether it was cached)."""
        nums, names = self._statics(args), self.static_argnames
        key, leaves = call_signature(self.__name__, args, kwargs, nums, names)
        lowered, why = self._lookup(key, leaves)  # a hit takes no lock
        if lowered is not None:
            return lowered, leaves, True
        with self._lock:  # one trace at a time: a thread that missed too finds it here
            lowered, why = self._lookup(key, leaves)
            if lowered is not None:
                return lowered, leaves, True
            if why is None:
                labels = [f"argument {i}" for i in range(len(args))]
                labels += [f"keyword argument {k!r}" for k in sorted(kwargs)]
                why = "first call" if not self.trace_count else None
                why = why or _key_change(self._last_key, key, labels)
            if _debug("recompiles"):
                print(f"needlec: tracing {self.__name__}: {why}", file=sys.stderr)
            statics = [a for i, a in enumerate(args) if i in nums]
            statics += [v for k, v in kwargs.items() if k in names]
            roots = self._roots + [guards.Root("a static argument", lambda v=v: v) for v in statics]
            before = guards.plain_state(roots, _is_tensor)
            prints = guards.fingerprints(roots, _is_tensor)
            with guards.CodeRecorder() as recorder:
                outside = _ArraysOutside(roots, recorder)
                traced = trace_function(self.fn, args, kwargs, nums, names, leaves, outside)
            ran = recorder.roots()
            guards.check_side_effects(
                self.__name__, roots, before, traced.trace, _is_tensor, more=ran
            )
            lowered = Lowered(traced)
            self.trace_count += 1
            guard = guards.Guard(
                guards.merge(roots, ran), _is_tensor, traced.dynamic_attrs(), prints
            )
            if not self._warned_large:
                self._warned_large = guards.warn_if_large(self.__name__, guard)
            if _debug("guards"):
                note = "; a profiler was running: globals read by methods were not recorded"
                note = note if recorder.skipped else ""
                print(
                    f"needlec: guards of {self.__name__}: {guard.summary()}{note}", file=sys.stderr
                )
            self._insert(key, lowered, guard)
            self._last_key = key
            self._reasons.append(why)
            n = self.trace_count
            if n >= _RETRACE_WARNING and n & (n - 1) == 0:  # at 8, 16, 32, ... traces
                counts = Counter(r.split(":")[0] for r in self._reasons)
                what = ", ".join(f"{w} ({c}x)" for w, c in counts.most_common())
                warnings.warn(
                    f"jit({self.__name__}) has traced {n} times; the last "
                    f"{len(self._reasons)} traces were for: {what} (last: {why}). "
                    "NEEDLEC_DEBUG=recompiles prints each reason",
                    stacklevel=4,
                )
        return lowered, leaves, False

    def _insert(self, key, lowered: Lowered, guard) -> None:
        """Add a trace (most recent first) and drop the least recently used past the bound."""
        # a new tuple: a lookup in another thread reads the old or the new
        self._cache[key] = ((lowered, guard), *self._cache.get(key, ()))
        self._used[key] = next(_ticks)
        while self.cache_size() > self.max_cache_size:
            oldest = min(self._cache, key=lambda k: self._used.get(k, -1))
            entries = self._cache[oldest]
            if oldest == key or len(entries) > 1:
                self._cache[oldest] = entries[:-1]
            else:
                del self._cache[oldest]
                self._used.pop(oldest, None)

    def _check(self, lowered: Lowered, args, kwargs, leaves) -> None:
        """Check mode: trace again and compare with the cached trace."""
        with self._lock:
            fresh = trace_function(
                self.fn, args, kwargs, self._statics(args), self.static_argnames, leaves
            )
        what = trace_difference(lowered.traced, fresh)
        if what is not None:
            raise StaleTraceError(
                f"jit({self.__name__}): the cached trace is stale: {what}. Something the "
                "function reads changed where no guard sees it (NEEDLEC_DEBUG=guards lists "
                "those places); pass that value as an argument, or keep it in a tensor"
            )

    def __get__(self, obj, objtype=None):
        """`@jit` on a method: the instance is read like a closure (its tensors captured)."""
        if obj is None:
            return self
        hit = self._bound.get(id(obj))
        if hit is not None and hit[0]() is obj:
            return hit[1]
        with self._lock:  # one bound Jitted (one cache) per instance, whichever thread is first
            hit = self._bound.get(id(obj))
            if hit is not None and hit[0]() is obj:
                return hit[1]
            fn = self.fn.__get__(obj, objtype)
            bound = Jitted(fn, *self._given, cache_size=self.max_cache_size, check=self.check)
            k, table = id(obj), self._bound
            try:  # dropped with the instance (instances need not be hashable)
                ref = weakref.ref(obj, lambda r: table.get(k, (None,))[0] is r and table.pop(k))
            except TypeError:  # not weak-referenceable: kept alive with its cache
                ref = lambda o=obj: o  # noqa: E731
            self._bound[k] = (ref, bound)
        return bound

    def _hit(self, args):
        """A call's result through the hit path (`frontend.hit`), or hit.MISS."""
        if _traces.stack:  # inside a trace: inlined
            return MISS
        key = self._hits.get(hit_key(args))
        if key is None:
            return MISS
        entries = self._cache.get(key, ())
        if len(entries) != 1:  # several traces under one key: _lookup decides
            return MISS
        lowered, guard = entries[0]
        plan = lowered.hit_plan
        if not plan or guard.check() is not None:  # (captures are checked by the plan)
            return MISS
        self._used[key] = next(_ticks)
        return plan.run(args)

    def __call__(self, *args, **kwargs):
        if self._hits and not kwargs and not self.check:  # (only plain calls fill _hits)
            out = self._hit(args)
            if out is not MISS:
                return out
            if drawn.seed is not None:  # the hit path drew this call's seed, then refused
                try:
                    return self._general(args, kwargs)
                finally:
                    drawn.seed = None
        return self._general(args, kwargs)

    def _general(self, args, kwargs):
        """A call through tracing or the trace cache (every call the hit path does not take)."""
        if current() is not None:  # jit inside a trace: inline
            return self.fn(*args, **kwargs)
        lowered, leaves, cached = self._entry(args, kwargs)
        if cached and self.check:
            self._check(lowered, args, kwargs, leaves)
        out = lowered(leaves)
        if self._plain and not kwargs and not self.check:
            self._remember(args, leaves, lowered)
        return out

    def _remember(self, args, leaves, lowered: Lowered) -> None:
        """After a general call succeeded: let the next call with such arguments take the hit
        path, where the trace allows it."""
        key = hit_key(args)
        if key is None or hit.plan_for(lowered, leaves, args) is None or key in self._hits:
            return
        if len(self._hits) >= 4 * self.max_cache_size:  # kinds of call come and go: start over
            self._hits.clear()
        self._hits[key] = call_signature(self.__name__, args, {}, (), ())[0]

    def lower(self, *args, **kwargs) -> Lowered:
        """Trace (or reuse the trace) for these arguments and return the optimized function."""
        return self._entry(args, kwargs)[0]


def _as_tuple(x) -> tuple:
    return (x,) if isinstance(x, int | str) else tuple(x)


def jit(
    fn: Callable | None = None,
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    cache_size: int = _CACHE_SIZE,
    check: bool | None = None,
) -> Jitted:
    """Compile `fn`: trace it once per argument signature into a graph, optimize it, run it.

    Arguments may be tensors, numpy arrays, and tuples, lists and dicts of them; other Python
    values must be declared static (by position, negative counting from the end, or by name).
    Tensors and numpy arrays `fn` reads from its closure, globals or objects (model parameters)
    are inputs read at every call; rebinding one (`model.w = Tensor(...)`), or changing a Python
    value or function it read, retraces. At most `cache_size` traces are kept (the least
    recently used goes first). `check=True` (or `NEEDLEC_CHECK=1`) traces again at every call
    and raises `StaleTraceError` if the new trace differs from the cached one.

    >>> import needlec as nc, numpy as np
    >>> f = nc.jit(lambda x: nc.ops.tanh(x) * 2.0)
    >>> f(np.zeros(3, dtype="float32")).numpy()
    array([0., 0., 0.], dtype=float32)
    """
    if fn is None:
        return functools.partial(
            jit,
            static_argnums=static_argnums,
            static_argnames=static_argnames,
            cache_size=cache_size,
            check=check,
        )
    return Jitted(fn, _as_tuple(static_argnums), _as_tuple(static_argnames), cache_size, check)


def make_graph(fn: Callable, static_argnums: int | Sequence[int] = ()) -> Callable[..., Graph]:
    """`make_graph(f)(*args)`: the graph traced from `f` on these arguments (before optimization)."""

    nums, names = _static_args(fn, _as_tuple(static_argnums), ())

    def traced(*args, **kwargs) -> Graph:
        statics = tuple(i % len(args) if i < 0 and args else i for i in nums)  # f(*args)
        return trace_function(fn, args, kwargs, statics, names).graph

    return traced
