"""Graph-to-graph passes, and the pipeline that runs them (one named step a line)."""

from __future__ import annotations

import os
import sys

from ..ir import Graph
from .autodiff import differentiate
from .layout import assign_layouts
from .simplify import simplify

# the optimization pipeline a jitted function's graph goes through, in order
PIPELINE = [
    ("verify", Graph.verify),  # the traced graph is well typed
    ("simplify", simplify),  # fold constants, drop exact identities, collapse movement chains
    ("assign_layouts", assign_layouts),  # move transposes until NCHW<->NHWC pairs cancel
    ("verify", Graph.verify),  # the passes kept it well typed
]


def optimize(graph: Graph) -> Graph:
    """Run the pipeline; `NEEDLEC_DEBUG=passes` prints each step's graph to stderr."""
    debug = "passes" in os.environ.get("NEEDLEC_DEBUG", "").split(",")
    for name, step in PIPELINE:
        graph = step(graph)
        if debug:
            print(
                f"--- after {name} ({len(graph.nodes)} nodes)\n{graph.as_text()}", file=sys.stderr
            )
    return graph


__all__ = ["PIPELINE", "assign_layouts", "differentiate", "optimize", "simplify"]
