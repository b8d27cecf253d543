"""The reference backend: a graph run node by node with numpy, through the op semantics of
`needlec.ir.semantics` (`evaluate`, `LEAF_EVAL`, `draw_random`).

It is the oracle the compiled backends are tested against, the arithmetic of eager mode, and the
interpreter that runs a jitted graph until a compiled backend takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..ir import Graph, Node, Op
from ..ir.callback import CallbackError
from ..ir.printer import format_node
from ..ir.semantics import LEAF_EVAL, draw_random, evaluate


class ExecutionError(RuntimeError):
    """An op failed while a graph ran; the message names the node."""


def run_graph(graph: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run `graph` on numpy arrays (one per graph input) and return its outputs."""
    if len(inputs) != len(graph.inputs):
        raise ValueError(f"run_graph: {len(graph.inputs)} inputs expected, got {len(inputs)}")
    env: dict[Node, np.ndarray] = dict(zip(graph.inputs, inputs, strict=True))
    names = None
    for n in graph.nodes:
        if n in env:
            continue
        try:
            if n.op is Op.RAND:
                env[n] = draw_random(env[n.src[0]], n.arg, n.shape, n.dtype)
            elif n.op in LEAF_EVAL:
                env[n] = LEAF_EVAL[n.op](n)
            else:
                env[n] = evaluate(n.op, [env[s] for s in n.src], n.arg, n.shape, n.dtype)
        except CallbackError:  # a custom op's own error, which names the op and its line
            raise
        except Exception as e:
            names = names or {m: i for i, m in enumerate(graph.nodes)}
            raise ExecutionError(
                f"while executing %{names[n]}:{format_node(n, names)}: {type(e).__name__}: {e}"
            ) from e
    return [env[n] for n in graph.outputs]


def source(graph: Graph) -> str:
    """The graph as straight-line Python over numpy: what `run_graph` does, written out.

    It runs in the namespace `source_namespace(graph)` gives (see `compile_source`).
    """
    names = {n: f"v{i}" for i, n in enumerate(graph.nodes)}
    lines = [f"def run({', '.join(names[n] for n in graph.inputs)}):"]
    consts = callbacks = 0
    for n in graph.nodes[len(graph.inputs) :]:
        if n.op is Op.CONST and hasattr(n.arg, "array"):
            rhs, consts = f"CONSTS[{consts}]", consts + 1
        elif n.op is Op.CONST:
            rhs = f"np.full({n.shape}, {n.arg!r}, dtype={n.dtype!r})"
        elif n.op is Op.RAND:
            rhs = f"philox({names[n.src[0]]}, {n.arg!r}, {n.shape}, {n.dtype!r})"
        elif n.op is Op.CALLBACK:  # the Python function is named by its place in CALLBACKS
            srcs = "".join(f"{names[s]}, " for s in n.src)
            rhs = f"evaluate(Op.CALLBACK, ({srcs}), CALLBACKS[{callbacks}], {n.shape}, {n.dtype!r})"
            lines.append(f"    # {names[n]}: {n.arg.describe()}")
            callbacks += 1
        else:
            srcs = "".join(f"{names[s]}, " for s in n.src)
            rhs = f"evaluate(Op.{n.op.name}, ({srcs}), {n.arg!r}, {n.shape}, {n.dtype!r})"
        lines.append(f"    {names[n]} = {rhs}")
    lines.append(f"    return [{', '.join(names[n] for n in graph.outputs)}]")
    return "\n".join(lines) + "\n"


def source_namespace(graph: Graph) -> dict:
    """The names the code of `source(graph)` uses."""
    consts = [n.arg.array for n in graph.nodes if n.op is Op.CONST and hasattr(n.arg, "array")]
    callbacks = [n.arg for n in graph.nodes[len(graph.inputs) :] if n.op is Op.CALLBACK]
    return {
        "np": np,
        "Op": Op,
        "evaluate": evaluate,
        "philox": draw_random,
        "CONSTS": consts,
        "CALLBACKS": callbacks,
    }


def compile_source(graph: Graph) -> Callable:
    """`source(graph)` compiled: a function of the input arrays returning the output arrays."""
    namespace = source_namespace(graph)
    exec(compile(source(graph), "<needlec reference>", "exec"), namespace)
    return namespace["run"]
