"""Tracing: the trace context behind Tensor, pytrees, the jit cache keys and guards, and
`traced` (a traced function, running its graph on tensors, writing its state back)."""

from ..ir.ops import user_frame
from .trace import Trace, TracerError, current, tracing

__all__ = ["Trace", "TracerError", "current", "tracing", "user_frame"]
