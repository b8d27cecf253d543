"""The host target: LLVM initialised once, a target machine for this CPU (its name and features:
AVX2 and FMA, AVX-512 only where the CPU reports it), O3 with the loop and SLP vectorizers, and
MCJIT engines that keep compiled modules alive."""

from __future__ import annotations

import functools
import threading

import llvmlite.binding as llvm

from . import diskcache

_LOCK = threading.Lock()  # LLVM's global state is not ours to race on


@functools.cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


@functools.cache
def target_machine() -> llvm.TargetMachine:
    """This CPU, at opt level 3, no fast-math (shared: for optimizing and printing)."""
    return _new_target_machine()


def _new_target_machine() -> llvm.TargetMachine:
    _init()
    t = llvm.Target.from_default_triple()
    return t.create_target_machine(
        cpu=llvm.get_host_cpu_name(),
        features=llvm.get_host_cpu_features().flatten(),
        opt=3,
        reloc="default",
        codemodel="jitdefault",
    )


def triple() -> str:
    _init()
    return llvm.get_process_triple()


def data_layout() -> str:
    return str(target_machine().target_data)


# Loop unrolling is off: on a step of 332 kernels it took 80% of the optimization time (96 s
# against 21 s), while the vectorizer's own interleaving keeps the hot loops as fast (measured
# in benchmarks/bench_kernels.py).
UNROLL = False
# how `optimize` and the target machine compile: part of every disk cache key (change it with them)
PIPELINE = f"O3 loop-vectorize slp-vectorize unroll={UNROLL}; cpu=host reloc=default jitdefault"


def optimize(mod: llvm.ModuleRef) -> None:
    """O3 with loop and SLP vectorization, in place."""
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = UNROLL
    pb = llvm.create_pass_builder(target_machine(), pto)
    pm = pb.getModulePassManager()
    pm.run(mod, pb)


class Library:
    """Compiled code, its engine kept alive with it; `optimized` is the module as optimized
    (parsed and optimized again on demand when the code came from the disk cache); `key`: its
    disk cache key (`text` is None when it was loaded by key alone, `load_object`)."""

    def __init__(
        self, text: str | None, engine: llvm.ExecutionEngine, optimized=None, key: str = ""
    ) -> None:
        self.text, self.engine, self._optimized = text, engine, optimized
        self.from_disk = optimized is None
        self.key = key

    @property
    def optimized(self) -> llvm.ModuleRef:
        if self._optimized is None:
            with _LOCK:
                mod = llvm.parse_assembly(self.text)
                optimize(mod)
                self._optimized = mod
        return self._optimized

    def function_address(self, name: str) -> int:
        return self.engine.get_function_address(name)


def compile_module(text: str) -> Library:
    """Parse, verify, optimize and compile LLVM IR text for this CPU, or load the machine code a
    process compiled from the same text before (`diskcache`)."""
    with _LOCK:
        _init()
        # an engine owns its target machine (and frees it with itself): a fresh one each
        tm = _new_target_machine()
        cpu = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
        key = diskcache.key(text, *cpu, PIPELINE)
        obj = diskcache.load(key)
        if obj is not None:
            return Library(text, _engine_for(obj, tm), key=key)
        mod = llvm.parse_assembly(text)
        mod.verify()
        optimize(mod)
        engine = llvm.create_mcjit_compiler(mod, tm)
        written = []
        engine.set_object_cache(notify_func=lambda _m, data: written.append(bytes(data)))
        engine.finalize_object()
        if written:
            diskcache.store(key, written[0])
        return Library(text, engine, mod, key)


def load_object(key: str) -> Library | None:
    """The machine code stored on disk under `key` (an object entry), loaded; None where it is
    missing or refused as damaged."""
    with _LOCK:
        obj = diskcache.load(key)
        if obj is None:
            return None
        _init()
        return Library(None, _engine_for(obj, _new_target_machine()), key=key)


def host_cpu() -> tuple[str, str]:
    """This CPU's name and features, as object entries' keys hold them."""
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def _engine_for(obj: bytes, tm: llvm.TargetMachine) -> llvm.ExecutionEngine:
    empty = llvm.parse_assembly("")
    empty.triple = triple()
    engine = llvm.create_mcjit_compiler(empty, tm)
    engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    return engine


def assembly(mod: llvm.ModuleRef) -> str:
    """The machine code of a module, as assembly text."""
    with _LOCK:
        return target_machine().emit_assembly(mod)
