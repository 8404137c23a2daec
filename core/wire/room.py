"""Waiting for room that is freed elsewhere on the same event loop (admission, memory budget).

A caller with room goes on at once, with no lock and no timer: on one event loop nothing can run
between its check and its take. Only a caller that must wait takes the condition, and whoever
frees room wakes the waiters only when there are some.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Room"]


class Room:
    """``await room.wait(ready, timeout_s)`` until ``ready()``; ``await room.freed()`` after
    freeing some."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._waiting = 0

    async def wait(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Whether ``ready()`` holds now or turns true within ``timeout_s``; the caller takes
        its room right after, before any other coroutine runs."""
        if ready():
            return True
        self._waiting += 1
        try:
            async with self._changed:
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait_for(ready)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1

    async def freed(self) -> None:
        """Room was freed: let the waiters look again (no lock when nobody waits)."""
        if self._waiting:
            async with self._changed:
                self._changed.notify_all()
