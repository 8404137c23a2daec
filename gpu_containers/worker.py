"""The worker's command line: ``python -m gpu_containers.worker --model-repo DIR``.

With ``--batch`` it serves nothing: it runs the one shard an AWS Batch job was given and exits
(``gpu_containers.batch_job``).

``gpufan worker`` (``core.cli``) calls ``main`` with the same flags. The worker loads every model
version of the repository, then serves the OIP routes on ``--host:--port`` and prints
``gpufan worker listening on http://HOST:PORT`` once it accepts requests: the line a parent process
(``core.frontdoor.workers.WorkerPool``) reads to learn the port when it passed ``--port 0``. With
``--grpc-port`` it serves the same routes over gRPC too, and the line ends ``and grpc://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from core.errors import ConfigError
from core.wire.asgi import DEFAULT_MEMORY_BUDGET, AsgiApp, bind_socket, serve
from core.wire.edge import EdgeLimits
from core.wire.logs import configure_logging
from core.wire.oip import DataPlane, OipHandler
from gpu_containers.dataplane import WorkerDataPlane
from gpu_containers.reloading import ReloadingPlane
from gpu_containers.repository import Repository
from gpu_containers.sources import LocalSource, open_source
from gpu_containers.telemetry import WorkerMetrics

__all__ = ["build_parser", "main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _seconds_or_zero(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds (0: off), got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The worker's flags; ``core.cli`` mounts the same parser under ``gpufan worker``."""
    p = argparse.ArgumentParser(
        prog="gpufan worker",
        description="Serve a Triton-style ONNX model repository over the Open Inference Protocol.",
    )
    p.add_argument(
        "--model-repo",
        required=True,
        help="repository: DIR/{model}/{version}/model.onnx, or the same tree under "
        "s3://BUCKET/PATH, gs://BUCKET/PATH or az://ACCOUNT/CONTAINER/PATH (each SDK's "
        "standard credentials; mirrored into --model-cache)",
    )
    p.add_argument(
        "--model-cache",
        type=Path,
        default=None,
        help="where a remote repository is mirrored, by object version (default: the "
        "temporary directory)",
    )
    p.add_argument(
        "--repository-poll-secs",
        type=_seconds_or_zero,
        default=0.0,
        help="look for a new state of the repository this often and serve it once it loads "
        "whole, as Triton's poll mode (default 0: load once)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_non_negative, default=8080, help="port (default 8080; 0 picks a free one)"
    )
    p.add_argument(
        "--grpc-port",
        type=_non_negative,
        default=None,
        help="also serve the OIP over gRPC on this port, as Triton's flag (0 picks a free one; "
        "default: no gRPC)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=_positive,
        default=1,
        help="onnxruntime intra-op threads per session (default 1)",
    )
    p.add_argument(
        "--max-batch-size",
        type=_non_negative,
        default=None,
        help="override every model's max_batch_size (config.pbtxt, else 64)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=_non_negative,
        default=None,
        help="override every model's dynamic-batching delay (config.pbtxt, else 500)",
    )
    p.add_argument(
        "--no-dynamic-batching",
        action="store_true",
        help="run every request on its own (the benchmark's baseline)",
    )
    p.add_argument(
        "--variant",
        choices=("ort", "fp16", "int8"),
        default=None,
        help="serve each version's variants/VARIANT.onnx (gpufan optimize) where it exists",
    )
    p.add_argument(
        "--accelerator",
        default=None,
        help="this host's accelerator as profile tables name it (default: cpu on the CPU "
        "provider): batches are cut at the size {model}/profile.csv measured fastest on it",
    )
    p.add_argument(
        "--max-body-mb", type=_positive, default=256, help="largest request body (default 256 MiB)"
    )
    edge = EdgeLimits()
    p.add_argument(
        "--memory-budget-mb",
        type=_positive,
        default=DEFAULT_MEMORY_BUDGET >> 20,
        help="bytes requests in flight may hold once decoded; past it a request waits briefly, "
        f"then gets 503 + Retry-After (default {DEFAULT_MEMORY_BUDGET >> 20} MiB)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=_seconds,
        default=edge.header_timeout_s,
        help=f"headers must arrive within this, else 408 (default {edge.header_timeout_s:g})",
    )
    p.add_argument(
        "--body-timeout-s",
        type=_seconds,
        default=edge.body_timeout_s,
        help=f"longest silence inside a body, else 408 (default {edge.body_timeout_s:g})",
    )
    p.add_argument(
        "--keep-alive-s",
        type=_seconds,
        default=edge.keep_alive_s,
        help=f"idle keep-alive connections close after this (default {edge.keep_alive_s:g})",
    )
    p.add_argument(
        "--max-connections",
        type=_positive,
        default=edge.max_connections,
        help=f"open sockets; past it, 503 + Retry-After (default {edge.max_connections})",
    )
    p.add_argument(
        "--batch",
        action="store_true",
        help="run the one shard this AWS Batch job was given and exit, instead of serving "
        "(gpu_containers.batch_job; only --model-repo and --intra-op-threads apply)",
    )
    p.add_argument(
        "--token-env",
        default="GPUFAN_WORKER_TOKEN",
        help="environment variable holding the bearer token; unset means no auth "
        "(default GPUFAN_WORKER_TOKEN)",
    )
    return p


def _plane_builder(args: argparse.Namespace) -> Callable[[Path], WorkerDataPlane]:
    """Build a data plane from a repository directory with the flags' overrides; every plane
    of one worker (poll mode builds one per new state) shares one set of metrics."""
    metrics = WorkerMetrics()

    def build(path: Path) -> WorkerDataPlane:
        repository = Repository.load(
            path,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            dynamic_batching=not args.no_dynamic_batching,
            variant=args.variant,
        )
        return WorkerDataPlane(
            repository,
            intra_op_threads=args.intra_op_threads,
            accelerator=args.accelerator,
            metrics=metrics,
        )

    return build


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker until SIGINT/SIGTERM; 0 on a clean stop, 2 on a configuration error."""
    args = build_parser().parse_args(argv)
    configure_logging()
    if args.grpc_port is not None:  # before the models load: a missing extra fails at once
        try:
            import core.wire.grpcserver  # noqa: F401  # grpcio: only when gRPC is asked for
        except ImportError as e:
            print(f"gpufan worker: --grpc-port needs gpufan[grpc] ({e})", file=sys.stderr)
            return 2
    try:
        source = open_source(args.model_repo, args.model_cache)
        if args.batch:
            from gpu_containers.batch_job import run_job

            # a local repository is the job's to check (it reports with its own exit codes)
            local = isinstance(source, LocalSource)
            repo = args.model_repo if local else str(asyncio.run(source.sync()))
            return run_job(repo, intra_op_threads=args.intra_op_threads)
        path = asyncio.run(source.sync())  # the first state: always a directory
        assert path is not None
        build = _plane_builder(args)
        first = build(path)
        sock = bind_socket(args.host, args.port)
    except (ConfigError, OSError) as e:
        print(f"gpufan worker: {e}", file=sys.stderr)
        return 2
    plane: DataPlane = first
    hooks: dict[str, Callable[[], Awaitable[None]]] = {"shutdown": first.close}
    if args.repository_poll_secs > 0:
        plane = reloading = ReloadingPlane(first, build, source, args.repository_poll_secs)
        hooks = {"startup": reloading.start, "shutdown": reloading.close}
    token = os.environ.get(args.token_env) or None
    app = AsgiApp(
        OipHandler(plane, token=token),
        max_body_bytes=args.max_body_mb * 1024 * 1024,
        memory_budget=args.memory_budget_mb * 1024 * 1024,
        edge=EdgeLimits(
            header_timeout_s=args.header_timeout_s,
            body_timeout_s=args.body_timeout_s,
            keep_alive_s=args.keep_alive_s,
            max_connections=args.max_connections,
        ),
        **hooks,
    )
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    announce = f"gpufan worker listening on http://{host}:{port}"
    if args.grpc_port is None:
        serve(app, sock, announce=announce)
        return 0
    from core.wire.grpcserver import serve_grpc

    edge = serve_grpc(app, lambda: plane, host=args.host, port=args.grpc_port, token=token,
                      max_message_bytes=args.max_body_mb * 1024 * 1024)  # fmt: skip
    serve(app, sock, announce=lambda: f"{announce} and grpc://{edge.address}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
