"""The sandbox templates render in: no Python internals, no default globals, bounded resources.

One ``ImmutableSandboxedEnvironment`` per template search path, with ``StrictUndefined``. A render
is bounded in what it may build (``max_output_chars``: ``*``, ``+`` and ``**`` are checked before
they run, and the streamed output as it grows) and in how long it may run (``timeout``: a
watchdog thread raises in the rendering thread). The limits are set per render with
:func:`render_limits`.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import math
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

DEFAULT_MAX_OUTPUT_CHARS = 1_000_000
DEFAULT_TIMEOUT = 5.0
_OUTPUT_LIMIT: contextvars.ContextVar[int] = contextvars.ContextVar(
    "promptkit_output_limit", default=DEFAULT_MAX_OUTPUT_CHARS
)


class OutputTooLarge(Exception):
    """A template built a value or an output past ``max_output_chars``."""


class RenderTimeout(BaseException):
    """Raised inside a rendering thread that ran past its deadline (a BaseException, so a
    template's own error handling cannot swallow it)."""


class _Watchdog:
    """One daemon thread that stops renders running past their deadline.

    A render registers its thread and deadline; if it is still registered when the deadline
    passes, the watchdog raises :class:`RenderTimeout` in that thread (jinja2 runs as Python
    bytecode, so the exception lands at the next instruction).
    """

    def __init__(self) -> None:
        self.deadlines: dict[int, float] = {}
        self.fired: set[int] = set()
        self.lock = threading.Condition()
        self.thread: threading.Thread | None = None

    def watch(self, seconds: float) -> int:
        ident = threading.get_ident()
        with self.lock:
            self.deadlines[ident] = time.monotonic() + seconds
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, daemon=True, name="promptkit-render-watchdog"
                )
                self.thread.start()
            self.lock.notify()
        return ident

    def release(self, ident: int) -> None:
        with self.lock:
            self.deadlines.pop(ident, None)
            if ident in self.fired:  # fired as the render ended: drop it if not yet delivered
                self.fired.discard(ident)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)

    def _run(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                for ident, deadline in list(self.deadlines.items()):
                    if deadline <= now:
                        del self.deadlines[ident]
                        self.fired.add(ident)
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(ident), ctypes.py_object(RenderTimeout)
                        )
                soonest = min(self.deadlines.values(), default=now + 60)
                self.lock.wait(timeout=max(soonest - now, 0.001))


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def render_limits(max_output_chars: int, timeout: float) -> Iterator[None]:
    """Bound what a render may build (characters) and how long it may run (seconds)."""
    token = _OUTPUT_LIMIT.set(max_output_chars)
    ident = _WATCHDOG.watch(timeout)
    try:
        yield
    finally:
        _WATCHDOG.release(ident)
        _OUTPUT_LIMIT.reset(token)


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


class SandboxEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Sandboxed, strict, and with none of Jinja's default globals (lipsum, cycler, joiner...).

    ``*``, ``+`` and ``**`` are checked before they run, so ``'a' * 10**9`` or ``9 ** 9 ** 9``
    fails at once instead of allocating gigabytes.
    """

    intercepted_binops = frozenset(["*", "+", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limit = _OUTPUT_LIMIT.get()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                size = _sized(seq)
                if size is not None and isinstance(times, int) and size * times > limit:
                    raise OutputTooLarge
        elif operator == "+":
            a, b = _sized(left), _sized(right)
            if a is not None and b is not None and a + b > limit:
                raise OutputTooLarge
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and right * math.log2(abs(left)) > 8 * limit  # more bits than the output may hold
        ):
            raise OutputTooLarge
        return super().call_binop(context, operator, left, right)

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__(
            loader=jinja2.FileSystemLoader([str(p) for p in paths]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.globals.clear()
        self.globals["range"] = jinja2.sandbox.safe_range
