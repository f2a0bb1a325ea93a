"""What every simulator and the local stack share: started and stopped, or used as ``async with``.

async with ToolServer(secret) as tools:      # start() on entry, stop() on exit (errors or not)
    ...
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Served"]


class Served:
    """A thing that serves between ``start()`` and ``stop()``; subclasses define both."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
