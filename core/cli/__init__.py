"""The ``gpufan`` command: worker, serve, infer, plan, demo.

Each sub-command parses its flags here and calls one function in its own module; presentation
(tables, progress) lives in ``core.cli.render``. Errors from the core are printed as one line and
exit with status 2 (bad input/config) or 1 (runtime failure), never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.errors import ClientError, ConfigError, GpufanError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufan",
        description="Serve ONNX models on the cheapest GPU capacity that meets a latency target.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "worker",
        help="run one GPU worker (Open Inference Protocol over ONNX Runtime)",
        add_help=False,
    )

    serve = sub.add_parser("serve", help="run the front door (embedded default without --config)")
    serve.add_argument("--config", type=Path, help="gpufan.yaml (default: the embedded demo)")
    serve.add_argument("--host", help="listen address (default from config, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default from config, else 8000)")
    serve.add_argument("--workers", type=int, help="local workers to start (embedded default: 2)")

    infer = sub.add_parser("infer", help="send a batch to an OIP server and print the result")
    infer.add_argument(
        "--url", required=True, help="front door or worker, e.g. http://127.0.0.1:8000"
    )
    infer.add_argument("--model", required=True)
    infer.add_argument(
        "--input",
        required=True,
        type=Path,
        help=".npy (the model's single input) or .npz (one array per input name)",
    )
    infer.add_argument("--output", type=Path, help="save outputs: .npy (first output) or .npz")
    infer.add_argument("--json", action="store_true", help="JSON tensors instead of binary")
    infer.add_argument("--slo-ms", type=float, help="latency target for this request")
    infer.add_argument("--token-env", help="environment variable holding the bearer token")
    infer.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")

    plan = sub.add_parser("plan", help="price every target for a request and show the placement")
    plan.add_argument("--model", required=True)
    plan.add_argument("--items", type=int, required=True, help="items in the request")
    plan.add_argument("--from", help="where the request comes from, e.g. aws:us-east-1")
    plan.add_argument("--slo-ms", type=float, help="latency target (default: the policy's)")
    plan.add_argument("--max-usd", type=float, help="refuse placements that cost more")
    plan.add_argument("--clouds", help="allowed clouds, comma-separated")
    plan.add_argument("--regions", help="allowed regions, comma-separated")
    plan.add_argument("--objective", choices=["cost", "latency", "weighted"])
    plan.add_argument("--config", type=Path, help="gpufan.yaml (default: the embedded demo)")
    plan.add_argument("--live", action="store_true", help="ask the clouds' price APIs first")
    plan.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="start the embedded default, push a real batch, report")
    demo.add_argument("--workers", type=int, default=3, help="local workers (default 3)")
    demo.add_argument(
        "--no-chaos",
        action="store_true",
        help="skip the second round, in which one worker is killed",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:  # the worker owns its flags (and its --help)
        from gpu_containers.worker import main as worker_main

        return worker_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from core.cli.serve import run_serve

            return run_serve(args.config, host=args.host, port=args.port, workers=args.workers)
        if args.command == "infer":
            from core.cli.infer import run_infer

            return run_infer(args)
        if args.command == "plan":
            from core.cli.plan import run_plan

            return run_plan(args)
        from core.cli.demo import run_demo

        return run_demo(workers=args.workers, chaos=not args.no_chaos)
    except (ConfigError, ClientError) as e:
        print(f"gpufan {args.command}: {e}", file=sys.stderr)
        return 2
    except GpufanError as e:
        print(f"gpufan {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
