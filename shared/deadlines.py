"""The deadline of the RPC being served, for code far from its gRPC context (the pool).

The logging interceptor records it when a call starts; it lives in a context variable, so
each call's task sees its own.
"""

import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "call_deadline", default=None
)


def set_call_deadline(time_remaining: float | None) -> None:
    """Records the call's deadline from grpc's `context.time_remaining()` (None: no deadline)."""
    _deadline.set(None if time_remaining is None else time.monotonic() + time_remaining)


def seconds_left() -> float | None:
    """Seconds until the current call's deadline; None outside a call or without one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def answer_margin(seconds_left: float) -> float:
    """Time kept back from a deadline to answer before it passes: a fifth of what is left,
    at most 100 ms, so that even a 20 ms deadline leaves 16 ms of work."""
    return min(0.1, seconds_left * 0.2)
