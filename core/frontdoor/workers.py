"""A pool of local GPU-worker processes, for ``gpufan serve``, benchmarks and integration tests.

Each worker is ``python -m gpu_containers.worker --port 0 ...``: the OS picks a free port and the
child announces it on stdout (``gpufan worker listening on http://HOST:PORT``). All children start
at once and the pool waits for every announcement under one deadline, so N workers cost about one
start-up, not N. stdout and stderr go to temporary files rather than pipes: a chatty child can
never block on a full pipe, and a child that dies early leaves its stderr for the error message.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from core.errors import WorkerStartError

__all__ = ["WorkerPool"]

_ANNOUNCE = re.compile(rb"gpufan worker listening on (http://\S+)(?: and grpc://(\S+))?")
_POLL_S = 0.02
_STDERR_TAIL = 2000


class _Child:
    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        # The files live as long as the child; close_files() closes them when it is reaped.
        self.out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, env=dict(env)
        )
        self.endpoint: str | None = None
        self.grpc_address: str | None = None  # host:port, when started with --grpc-port

    def poll_announce(self) -> str | None:
        self.out.seek(0)
        m = _ANNOUNCE.search(self.out.read())
        self.endpoint = m.group(1).decode() if m else None
        self.grpc_address = m.group(2).decode() if m and m.group(2) else None
        return self.endpoint

    def stderr_tail(self) -> str:
        self.err.seek(0, os.SEEK_END)
        size = self.err.tell()
        self.err.seek(max(0, size - _STDERR_TAIL))
        return self.err.read().decode("utf-8", "replace").strip() or "(no stderr)"

    def close_files(self) -> None:
        self.out.close()
        self.err.close()


class WorkerPool:
    """``n`` worker processes serving ``model_repo`` on loopback; stop it to reap them.

    Example::

        with WorkerPool("gpu_containers/demo_models", n=2) as pool:
            print(pool.endpoints)  # ['http://127.0.0.1:41234', 'http://127.0.0.1:41235']
    """

    def __init__(
        self,
        model_repo: str | Path,
        n: int = 1,
        extra_args: Sequence[str] = (),
        *,
        intra_op_threads: int = 1,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 60.0,
        grace_s: float = 5.0,
    ) -> None:
        if n < 1:
            raise ValueError(f"a worker pool needs n >= 1 workers, got {n}")
        self._args = [
            sys.executable, "-m", "gpu_containers.worker",
            "--model-repo", str(model_repo), "--host", "127.0.0.1", "--port", "0",
            "--intra-op-threads", str(intra_op_threads), *extra_args,
        ]  # fmt: skip
        # OpenMP-backed kernels would otherwise start one thread per core in every worker.
        self._env = {**os.environ, "OMP_NUM_THREADS": str(intra_op_threads), **(env or {})}
        self._n = n
        self._timeout = start_timeout_s
        self._grace = grace_s
        self._children: list[_Child] = []

    def start(self) -> WorkerPool:
        """Start every worker in parallel and wait for all announcements.

        Raises:
            WorkerStartError: a worker died or did not announce within ``start_timeout_s``; every
                worker of the pool has been stopped by then.
        """
        if self._children:
            raise RuntimeError("the pool is already started")
        self._children = [_Child(self._args, self._env) for _ in range(self._n)]
        deadline = time.monotonic() + self._timeout
        try:
            for i, child in enumerate(self._children):
                while child.poll_announce() is None:
                    code = child.proc.poll()
                    if code is not None:
                        raise WorkerStartError(
                            f"worker {i} exited with code {code} before announcing its port; "
                            f"stderr:\n{child.stderr_tail()}"
                        )
                    if time.monotonic() > deadline:
                        raise WorkerStartError(
                            f"worker {i} did not announce its port within {self._timeout:g} s; "
                            f"stderr:\n{child.stderr_tail()}"
                        )
                    time.sleep(_POLL_S)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def endpoints(self) -> list[str]:
        """Base URLs (``http://127.0.0.1:PORT``), one per worker, in start order."""
        return [c.endpoint or "" for c in self._children]

    @property
    def grpc_addresses(self) -> list[str | None]:
        """Each worker's gRPC ``host:port`` (None for one started without ``--grpc-port``)."""
        return [c.grpc_address for c in self._children]

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children]

    def stderr(self, i: int) -> str:
        """The last of worker ``i``'s stderr (its log: warm-up, accelerator fallbacks)."""
        return self._children[i].stderr_tail()

    def alive(self, i: int) -> bool:
        return self._children[i].proc.poll() is None

    def kill(self, i: int) -> None:
        """SIGKILL worker ``i`` and reap it (simulates a crashed or preempted GPU node)."""
        proc = self._children[i].proc
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL those still up after ``grace_s``; always reaps all."""
        children, self._children = self._children, []
        for c in children:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        for c in children:
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
            c.close_files()

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
