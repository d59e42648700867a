"""Progress of long loops on the console: a tqdm bar on a terminal, plain lines everywhere else.

tqdm draws nothing useful when stderr is not a terminal (a log file, ``| tee``, a notebook cell
captured by a scheduler): it either stays silent or writes carriage returns. :class:`Progress` keeps
tqdm's bar on a terminal and otherwise prints one line at most every ``interval`` seconds (and one at
the end), so that a long run is never silent and its logs stay readable.
"""
import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

__all__ = ["Progress", "progress", "format_duration"]

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``"4.2 s"``, ``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """``with Progress(total, "convert", unit="case") as bar: ... bar.update()`` (a subset of tqdm's API).

    ``enabled=False`` prints nothing. ``stream`` defaults to stderr; ``terminal`` (default: whether the
    stream is a terminal) chooses tqdm's bar or lines like ``convert: 12/40 cases, 30 s, about 1 min 10 s
    left``.
    """

    def __init__(self, total: Optional[int], description: str, unit: str = "case", enabled: bool = True,
                 interval: float = 10.0, stream: Optional[TextIO] = None, terminal: Optional[bool] = None):
        self.total, self.description, self.unit = total, description, unit
        self.enabled, self.interval = enabled, interval
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.start = self._last_line = time.monotonic()
        is_terminal = terminal if terminal is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if enabled and is_terminal:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=description, unit=unit, file=self.stream, dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close(finished=exc[0] is None)

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        units = self.unit + ("" if self.unit.endswith("s") else "s")
        done = f"{self.n}/{self.total} {units}" if self.total else f"{self.n} {units}"
        text = f"{self.description}: {done}, {format_duration(elapsed)}"
        if self.total and 0 < self.n < self.total:
            text += f", about {format_duration(elapsed / self.n * (self.total - self.n))} left"
        return text

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._print(self._line())

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self._last_line = time.monotonic()

    def close(self, finished: bool = True) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and finished and self.n:
            self._print(self._line())
        self.enabled = False


def progress(iterable: Iterable[T], total: Optional[int], description: str, unit: str = "case",
             enabled: bool = True, **kwargs) -> Iterator[T]:
    """Iterate over ``iterable`` with a :class:`Progress`."""
    with Progress(total, description, unit=unit, enabled=enabled, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update()
