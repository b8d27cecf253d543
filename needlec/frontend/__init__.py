"""Tracing: the trace context behind Tensor, pytrees, and the jit cache keys."""

from .trace import Trace, TracerError, current, tracing, user_frame

__all__ = ["Trace", "TracerError", "current", "tracing", "user_frame"]
