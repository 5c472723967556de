"""Exponential backoff with a ceiling, for hand-offs to a Prefect API that is not answering."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th retry: `first_delay * factor**(n-1)`, never above `max_delay`.

    There is no attempt limit: a file is never dropped, it waits at most `max_delay`
    between attempts until Prefect takes it.
    """

    first_delay_seconds: float = 1.0
    factor: float = 2.0
    max_delay_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.first_delay_seconds < 0 or self.max_delay_seconds < self.first_delay_seconds:
            raise ValueError("need 0 <= first_delay_seconds <= max_delay_seconds")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after `failed_attempts` consecutive failures (1 for the first)."""
        if failed_attempts < 1:
            return 0.0
        exponent = min(failed_attempts - 1, 64)  # 2.0**1024 would overflow
        return float(min(self.max_delay_seconds, self.first_delay_seconds * self.factor**exponent))
