"""The host target: LLVM initialised once, a target machine for this CPU (its name and features:
AVX2 and FMA, AVX-512 only where the CPU reports it), O3 with the loop and SLP vectorizers, and
MCJIT engines that keep compiled modules alive."""

from __future__ import annotations

import functools
import threading

import llvmlite.binding as llvm

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


def optimize(mod: llvm.ModuleRef) -> None:
    """O3 with loop and SLP vectorization, in place."""
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(target_machine(), pto)
    pm = pb.getModulePassManager()
    pm.run(mod, pb)


class Library:
    """A compiled module, its engine kept alive with it."""

    def __init__(self, optimized: llvm.ModuleRef, engine: llvm.ExecutionEngine) -> None:
        self.optimized = optimized
        self.engine = engine

    def function_address(self, name: str) -> int:
        return self.engine.get_function_address(name)


def compile_module(text: str) -> Library:
    """Parse, verify, optimize and compile LLVM IR text for this CPU."""
    with _LOCK:
        _init()
        mod = llvm.parse_assembly(text)
        mod.verify()
        optimize(mod)
        # an engine owns its target machine (and frees it with itself): a fresh one each
        engine = llvm.create_mcjit_compiler(mod, _new_target_machine())
        engine.finalize_object()
        return Library(mod, engine)


def assembly(mod: llvm.ModuleRef) -> str:
    """The machine code of a module, as assembly text."""
    with _LOCK:
        return target_machine().emit_assembly(mod)
