"""Tracing: the trace context behind Tensor, pytrees, and the jit cache keys."""

from ..ir.ops import user_frame
from .trace import Trace, TracerError, current, tracing

__all__ = ["Trace", "TracerError", "current", "tracing", "user_frame"]
