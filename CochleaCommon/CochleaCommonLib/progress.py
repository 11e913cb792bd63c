"""Progress reporting and cancellation for long work, shared by the core, the Slicer widget and the CLI.

Why one protocol: a core loop (sliding-window inference, registration, a download) must not know
whether a Qt progress bar, a terminal bar or nothing listens. It receives a :class:`Progress`, calls
``update(fraction, message)`` now and then, and stops with :class:`OperationCancelled` when the user
clicked Cancel. Nested steps get a :meth:`Progress.sub` range so each step counts 0..1 on its own.

Callbacks have the signature ``callback(fraction, message)`` with ``fraction`` in 0..1. Like Slicer's
progress callbacks they may return ``True`` to request cancellation (any other return is ignored).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Callable, Optional, TextIO, TypeVar

from .errors import OperationCancelled

#: ``callback(fraction, message)``; returning True requests cancellation.
ProgressCallback = Callable[[float, str], Optional[bool]]

T = TypeVar("T")


class CancelToken:
    """A thread-safe cancel flag: the GUI thread calls :meth:`cancel`, the worker checks it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Request cancellation; the work stops at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether cancellation was requested."""
        return self._event.is_set()

    def raise_if_cancelled(self, message: str = "The operation was cancelled.") -> None:
        """Raise :class:`OperationCancelled` if cancellation was requested."""
        if self._event.is_set():
            raise OperationCancelled(message)


class _Sink:
    """The shared end of a Progress tree: the callback, the cancel flag and the last reported value."""

    def __init__(self, callback: ProgressCallback | None, cancel: CancelToken) -> None:
        self.callback = callback
        self.cancel = cancel
        self.fraction = 0.0
        self.message = ""

    def emit(self, fraction: float, message: str) -> None:
        self.fraction = max(self.fraction, fraction)  # monotonic even across sibling sub-ranges
        if message:
            self.message = message
        if self.callback is not None and self.callback(self.fraction, self.message) is True:
            self.cancel.cancel()


class Progress:
    """Report progress 0..1 with a message, and check for cancellation.

    ``Progress()`` with no callback is a valid no-op reporter that still honours a cancel token, so core
    functions can take ``progress: Progress | None`` and call :meth:`ensure` once.
    """

    def __init__(self, callback: ProgressCallback | None = None, cancel: CancelToken | None = None) -> None:
        self._sink = _Sink(callback, cancel if cancel is not None else CancelToken())
        self._start, self._end = 0.0, 1.0
        self._local = 0.0

    @classmethod
    def ensure(cls, progress: Progress | ProgressCallback | None) -> Progress:
        """Accept a :class:`Progress`, a bare callback or ``None`` and always return a :class:`Progress`."""
        if isinstance(progress, Progress):
            return progress
        return cls(progress)

    @property
    def cancel_token(self) -> CancelToken:
        """The token shared by this progress and all its sub-ranges."""
        return self._sink.cancel

    @property
    def fraction(self) -> float:
        """This reporter's own progress (0..1 in its local range)."""
        return self._local

    @property
    def cancelled(self) -> bool:
        """Whether cancellation was requested."""
        return self._sink.cancel.cancelled

    def check(self) -> None:
        """Raise :class:`OperationCancelled` if the user asked to cancel."""
        self._sink.cancel.raise_if_cancelled()

    def update(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (clamped to 0..1, never decreasing) and then check for cancellation.

        An empty message keeps the previous one. Raises :class:`OperationCancelled` if the callback
        returned True or the token was cancelled, so every update is also a cancellation point.
        """
        f = float(fraction)
        if math.isnan(f):
            f = self._local
        self._local = max(self._local, min(1.0, max(0.0, f)))
        self._sink.emit(self._start + self._local * (self._end - self._start), message)
        self.check()

    def sub(self, start: float, end: float) -> Progress:
        """A child reporter whose 0..1 maps onto ``start..end`` of this reporter's range.

        The child shares the callback and cancel token. Use one per step:
        ``load = progress.sub(0, 0.1); infer = progress.sub(0.1, 0.9)``.
        """
        lo, hi = (min(1.0, max(0.0, float(v))) for v in (start, end))
        if hi < lo:
            raise ValueError(f"Progress.sub needs start <= end, got {start}..{end}")
        child = Progress.__new__(Progress)
        child._sink = self._sink
        span = self._end - self._start
        child._start, child._end = self._start + lo * span, self._start + hi * span
        child._local = 0.0
        return child

    def iterate(self, iterable: Iterable[T], total: int | None = None, message: str = "") -> Iterator[T]:
        """Yield the items of ``iterable``, checking for cancel before each and reporting after each.

        ``total`` defaults to ``len(iterable)``; without either, progress is not reported (only
        cancellation is checked).
        """
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        for done, item in enumerate(iterable, start=1):
            self.check()
            yield item
            if total:
                self.update(done / total, message)


def render_bar(fraction: float, message: str = "", width: int = 30) -> str:
    """One line of a text progress bar: ``[#######-----]  42% message``."""
    f = min(1.0, max(0.0, float(fraction) if not math.isnan(fraction) else 0.0))
    filled = int(round(f * width))
    bar = "#" * filled + "-" * (width - filled)
    text = f"[{bar}] {int(f * 100):3d}%"
    return f"{text} {message}" if message else text


class TextProgressBar:
    """A :data:`ProgressCallback` drawing a progress bar on a terminal (stderr by default).

    On a terminal it redraws one line (at most every ``min_interval`` seconds); when the stream is a file
    or a CI log it prints a line only when the message changes or another 10 % is done, so logs stay short.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 30, min_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self._clock = clock
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_time = -math.inf
        self._last_len = 0
        self._last_message: str | None = None
        self._last_decile = -1
        self._drawn = False

    def __call__(self, fraction: float, message: str = "") -> None:
        line = render_bar(fraction, message, self.width)
        if self._interactive:
            now = self._clock()
            if fraction < 1.0 and message == self._last_message and now - self._last_time < self.min_interval:
                return
            self._last_time = now
            self.stream.write("\r" + line.ljust(self._last_len))
            self._last_len = len(line)
        else:
            decile = int(min(1.0, max(0.0, fraction)) * 10)
            if message == self._last_message and decile == self._last_decile:
                return
            self._last_decile = decile
            self.stream.write(line + "\n")
        self._last_message = message
        self._drawn = True
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line so later output starts on a fresh line."""
        if self._interactive and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False

    def __enter__(self) -> TextProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
