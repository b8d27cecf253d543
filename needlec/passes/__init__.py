"""Graph-to-graph passes, and the pipeline that runs them (one named step a line)."""

from __future__ import annotations

import os
import sys

from ..ir import Graph
from .autodiff import differentiate

# the optimization pipeline a jitted function's graph goes through, in order
PIPELINE = [
    ("verify", Graph.verify),
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


__all__ = ["PIPELINE", "differentiate", "optimize"]
