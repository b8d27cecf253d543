"""Graph-to-graph passes, and the pipeline that runs them (one named step a line).

A jitted function's traced graph goes through `PIPELINE` in order. The first steps rewrite the
graph; `rematerialize` decides what a training step saves for its backward; `fuse` turns the graph
into loop-nest kernels (the contract the backends render); `legalize` makes every conversion in
them an explicit cast and types every constant; `plan_memory` places every intermediate
in one arena. Each step is a pure function of the `Program` it is given.

`NEEDLEC_DEBUG=passes` prints what each step made; `NEEDLEC_DEBUG=fusion` prints the kernels and
the fusions that were refused, with their reasons.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from ..ir import Graph
from ..ir.kernel import KernelGraph
from ..ir.ops import Op
from .autodiff import differentiate
from .fusion import fuse
from .layout import assign_layouts
from .legalize import legalize
from .memory import MemoryPlan, order_for_donations, plan_memory, verify_plan
from .merge_gemms import Merge, merge_gemms
from .remat import RematPlan, rematerialize
from .simplify import simplify


@dataclass(frozen=True)
class Program:
    """What the pipeline carries: the graph, and what the later steps decided about it.

    `n_results`: how many leading outputs the function returns (the rest are values written
    back, such as new parameters); `donate`: output index -> input index whose buffer that
    output may take over (a parameter updated in place).
    """

    graph: Graph
    n_results: int | None = None
    donate: dict[int, int] = field(default_factory=dict)
    remat: RematPlan | None = None
    kernels: KernelGraph | None = None
    memory: MemoryPlan | None = None


def _on_graph(step: Callable[[Graph], Graph]) -> Callable[[Program], Program]:
    return lambda p: dataclasses.replace(p, graph=step(p.graph))


def _merge_gemms(p: Program) -> Program:
    merges: list[Merge] = []
    graph = merge_gemms(p.graph, merges)
    if _debug("passes"):
        for m in merges:
            print(f"needlec: merge_gemms: {m.describe()}", file=sys.stderr)
    return dataclasses.replace(p, graph=graph)


def _rematerialize(p: Program) -> Program:
    results = p.graph.outputs[: p.n_results] if p.n_results is not None else p.graph.outputs
    return dataclasses.replace(p, remat=rematerialize(p.graph, results))


def _fuse(p: Program) -> Program:
    recompute = p.remat.recompute if p.remat is not None else frozenset()
    return dataclasses.replace(p, kernels=fuse(p.graph, recompute))


def _legalize(p: Program) -> Program:
    return dataclasses.replace(p, kernels=legalize(p.kernels))


def _plan_memory(p: Program) -> Program:
    kg = p.kernels
    n = len(kg.outputs) if p.n_results is None else p.n_results
    returned = set(kg.outputs[:n])  # the caller keeps these: never written over an input
    # a new value of another shape or dtype replaces the tensor's array (as eager code rebinds
    # it): neither written over the old array nor copied into it after the step
    donations = {
        kg.outputs[o]: kg.inputs[i]
        for o, i in p.donate.items()
        if kg.outputs[o].kind == "output"
        and kg.outputs[o] not in kg.inputs
        and kg.outputs[o] not in returned
        and (kg.outputs[o].shape, kg.outputs[o].dtype) == (kg.inputs[i].shape, kg.inputs[i].dtype)
    }
    keep = {b for b in kg.outputs if b.kind == "input"}  # returned as is: never overwritten
    best = None
    # as fused, or with updates moved after the last reader of the old value (more donations,
    # longer lives): whichever needs less memory
    for kernels in (kg.kernels, tuple(order_for_donations(kg.kernels, donations))):
        candidate = dataclasses.replace(kg, kernels=kernels)
        steps = candidate.schedule()
        plan = plan_memory(steps, donations, keep=keep)
        size = plan.arena_bytes + plan.output_block_bytes
        if best is None or size < best[0]:
            best = (size, candidate, verify_plan(steps, plan))
    return dataclasses.replace(p, kernels=best[1], memory=best[2])  # the planned order runs


# the optimization pipeline a jitted function's graph goes through, in order
PIPELINE: list[tuple[str, Callable[[Program], Program]]] = [
    ("verify", _on_graph(Graph.verify)),  # the traced graph is well typed
    ("simplify", _on_graph(simplify)),  # fold constants, drop exact identities, collapse chains
    ("assign_layouts", _on_graph(assign_layouts)),  # move transposes until NCHW/NHWC pairs cancel
    # independent GEMMs sharing an operand as one GEMM on stacked operands, slices of it after
    ("merge_gemms", _merge_gemms),
    ("verify", _on_graph(Graph.verify)),  # the rewrites kept it well typed
    ("rematerialize", _rematerialize),  # what the backward saves, what it recomputes (min cut)
    ("fuse", _fuse),  # loop-nest kernels: elementwise chains, reductions, GEMM/conv epilogues
    ("legalize", _legalize),  # every dtype conversion an explicit cast, every constant typed
    ("plan_memory", _plan_memory),  # every intermediate at an offset in one arena, verified
]
GRAPH_STEPS = 5  # the steps that map a graph to a graph (what `optimize` runs)


def _debug(topic: str) -> bool:
    return topic in os.environ.get("NEEDLEC_DEBUG", "").split(",")


def _show(name: str, before: Program, after: Program) -> str:
    if after.memory is not before.memory:
        return after.memory.as_text()
    if after.kernels is not before.kernels:
        return after.kernels.as_text()
    if after.remat is not before.remat:
        return after.remat.as_text()
    return f"({len(after.graph.nodes)} nodes)\n{after.graph.as_text()}"


def callback_notes(kernels: KernelGraph) -> list[str]:
    """One line per kernel that is a Python callback (a custom op, or its gradient): what it
    runs, and what that costs."""
    return [
        f"needlec: kernel {k.name} runs {k.core.arg.describe()} as a Python callback: a kernel "
        "of its own, never fused, its inputs and output in memory; compiled code stops there and "
        "calls back into Python"
        for k in kernels.kernels
        if k.core is not None and k.core.op is Op.CALLBACK
    ]


def compile_program(
    graph: Graph, n_results: int | None = None, donate=None, start: Program | None = None
) -> Program:
    """Run the pipeline on a traced graph (or the steps after the graph-to-graph ones, from
    `start`, a program those already produced)."""
    program = start if start is not None else Program(graph, n_results, dict(donate or {}))
    steps = PIPELINE[GRAPH_STEPS:] if start is not None else PIPELINE
    for name, step in steps:
        before, program = program, step(program)
        if _debug("passes"):
            print(f"--- after {name} {_show(name, before, program)}", file=sys.stderr)
            if name == "fuse":
                for line in callback_notes(program.kernels):
                    print(line, file=sys.stderr)
    if _debug("fusion"):
        print(
            f"--- fusion\n{program.kernels.as_text()}\n{program.kernels.report.as_text()}",
            file=sys.stderr,
        )
    return program


def optimize(graph: Graph) -> Graph:
    """The graph-to-graph steps of the pipeline (for graphs that are not compiled to kernels
    themselves, such as the gradient graph of a jitted function's output)."""
    program = Program(graph)
    for name, step in PIPELINE[:GRAPH_STEPS]:
        before, program = program, step(program)
        if _debug("passes"):
            print(f"--- after {name} {_show(name, before, program)}", file=sys.stderr)
    return program.graph


__all__ = [
    "GRAPH_STEPS",
    "callback_notes",
    "PIPELINE",
    "Program",
    "assign_layouts",
    "compile_program",
    "differentiate",
    "fuse",
    "legalize",
    "merge_gemms",
    "optimize",
    "plan_memory",
    "rematerialize",
    "simplify",
]
