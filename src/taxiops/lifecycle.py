"""`Lifecycle`: `with` for anything that has `start()` and `stop()`."""

from __future__ import annotations

from typing import Self


class Lifecycle:
    """A base whose `with` block calls `start()` on entry and `stop()` on exit, however
    the block ends; subclasses define both."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
