"""One ``/metrics`` for the front-door processes that share a port (``gpufan serve --processes``).

SO_REUSEPORT hands each scrape to one process at random, so without this a counter would jump
between the processes' values at every scrape. Each process answers its own exposition on a Unix
socket in a folder the processes share (``{folder}/{pid}.sock``); the one that takes the scrape
reads its siblings' within ``timeout_s`` and merges them with its own (``merge``): every sample
with the same name and labels is summed — counters, histogram buckets, counts and sums, and
gauges alike (requests in flight and memory in use add up; a target's ``breaker_open`` reads in
how many processes it is open) — except ``_created`` timestamps, which keep the earliest. It adds
``gpufan_frontdoor_processes{state="answered"|"missing"}``: a sibling that did not answer in time
is missing from the sums, and said to be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["MetricsFanIn", "merge"]


def merge(expositions: Sequence[bytes]) -> bytes:
    """The expositions as one: same-named, same-labelled samples summed (module docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text.decode()):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key not in into:
                    into[key] = s.value
                elif s.name.endswith("_created"):
                    into[key] = min(into[key], s.value)
                else:
                    into[key] += s.value
    for name, family in families.items():
        family.samples = [Sample(n, dict(labels), v) for (n, labels), v in values[name].items()]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families:
    """A collector handing out already-built metric families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class MetricsFanIn:
    """This process's exposition on its socket in ``folder``, and the merged one of all."""

    def __init__(
        self,
        folder: Path,
        render: Callable[[], bytes],
        *,
        timeout_s: float = 1.0,
        name: str | None = None,
    ) -> None:
        self._folder = folder
        self._render = render
        self._timeout_s = timeout_s
        self._name = name  # None: the pid of the process that starts it
        self._path = folder / f"{name or os.getpid()}.sock"
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Answer siblings on this process's socket (a start-up hook: after a fork, so the pid
        in the name is this process's)."""
        self._path = self._folder / f"{self._name or os.getpid()}.sock"
        self._server = await asyncio.start_unix_server(self._answer, path=str(self._path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self._render())
            await writer.drain()
        finally:
            writer.close()

    async def merged(self, own: bytes) -> bytes:
        """``own`` merged with every sibling's that answers within the time limit."""
        siblings = [p for p in self._folder.glob("*.sock") if p != self._path]
        got = await asyncio.gather(*(self._read(p) for p in siblings))
        answered = [text for text in got if text is not None]
        counts = (
            "# HELP gpufan_frontdoor_processes Front-door processes whose metrics this scrape "
            "sums (missing: did not answer in time)\n"
            "# TYPE gpufan_frontdoor_processes gauge\n"
            f'gpufan_frontdoor_processes{{state="answered"}} {1 + len(answered)}\n'
            f'gpufan_frontdoor_processes{{state="missing"}} {len(siblings) - len(answered)}\n'
        ).encode()
        return merge([own, *answered, counts])

    async def _read(self, path: Path) -> bytes | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    return await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):  # gone (a stale socket) or too slow: counted missing
            return None
