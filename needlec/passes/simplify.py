"""Simplification passes."""

from __future__ import annotations

from ..ir import Graph


def eliminate_dead_code(graph: Graph) -> Graph:
    """Drop nodes no output needs (a graph keeps only what its outputs reach; inputs stay)."""
    return Graph(graph.inputs, graph.outputs)
