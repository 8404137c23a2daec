"""The ``gpufan`` command: worker, serve, infer, plan, optimize, profile, demo, package, targets,
autoscale, simulate.

Each sub-command parses its flags here and calls one function in its own module; presentation
(tables, progress) lives in ``core.cli.render``. Errors from the core are printed as one line and
exit with status 2 (bad input/config) or 1 (runtime failure), never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from core.cli.platforms import DEFAULT_PLATFORMS
from core.errors import ClientError, ConfigError, GpufanError

__all__ = ["main"]

# Sub-commands whose module owns all their work: name -> "module:function(args) -> int".
_COMMANDS = {
    "infer": "core.cli.infer:run_infer",
    "plan": "core.cli.plan:run_plan",
    "package": "core.cli.package:run_package",
    "targets": "core.cli.targets:run_targets",
    "autoscale": "core.cli.autoscale:run_autoscale",
    "simulate": "core.cli.simulate:run_simulate",
    "optimize": "core.cli.optimize:run_optimize",
    "profile": "core.cli.profile:run_profile",
}


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
    serve.add_argument(
        "--grpc-port",
        type=int,
        help="also serve the OIP over gRPC on this port, as Triton's flag (default from "
        "server.grpc_port, else no gRPC; 0 picks a free one)",
    )
    serve.add_argument(
        "--processes",
        type=int,
        help="front-door processes sharing the port through SO_REUSEPORT, to use every core "
        "(default from server.processes, else 1)",
    )

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
    plan.add_argument(
        "--input", action="append", metavar="NAME=DIMS",
        help="a request input's shape, batch axis first (images=1x3x320x320; a scalar: sr=); "
        "repeat per input. Profiles the model at those shapes instead of assuming 1",
    )  # fmt: skip
    plan.add_argument("--json", action="store_true", help="machine-readable output")

    package = sub.add_parser("package", help="build the function bundles Terraform deploys")
    package.add_argument("--out", type=Path, default=Path("dist"), help="output folder (dist)")
    package.add_argument(
        "--config", type=Path, help="gpufan.yaml to bundle (default: ./gpufan.yaml if present)"
    )
    package.add_argument(
        "--with-deps",
        action="store_true",
        help="resolve each bundle's requirements for its platform: the wheels go into "
        "lambda.zip, the other two get requirements.txt pinned",
    )
    package.add_argument(
        "--lambda-runtime",
        default=DEFAULT_PLATFORMS["aws"].runtime,
        help="the AWS module's lambda.runtime (default %(default)s)",
    )
    package.add_argument(
        "--lambda-architecture",
        default=DEFAULT_PLATFORMS["aws"].architecture,
        help="the AWS module's lambda.architecture: x86_64 or arm64 (default %(default)s)",
    )
    package.add_argument(
        "--gcf-runtime",
        default=DEFAULT_PLATFORMS["gcp"].runtime,
        help="the GCP module's functions.runtime (default %(default)s)",
    )
    package.add_argument(
        "--azure-python",
        default=DEFAULT_PLATFORMS["azure"].python,
        help="the Azure module's function_app.python_version (default %(default)s)",
    )

    optimize = sub.add_parser(
        "optimize", help="build FP16/INT8/optimised variants of a model, within an accuracy budget"
    )
    optimize.add_argument("--model-repo", type=Path, required=True, help="Triton-style repository")
    optimize.add_argument("--model", required=True)
    optimize.add_argument("--version", help="default: the highest")
    optimize.add_argument(
        "--data", type=Path, required=True,
        help=".npz of inputs (named as the model's, or one array for a one-input model): "
        "the first half calibrates INT8, the second validates every variant",
    )  # fmt: skip
    optimize.add_argument(
        "--variants", default="ort,fp16,int8", help="comma-separated (default ort,fp16,int8)"
    )
    optimize.add_argument("--max-abs-error", type=float, help="largest |variant - FP32| allowed")
    optimize.add_argument("--max-rel-error", type=float, help="largest relative error allowed")
    optimize.add_argument(
        "--min-top1-agreement", type=float, default=0.99,
        help="class outputs: share of items whose top-1 matches FP32's (default 0.99)",
    )  # fmt: skip
    optimize.add_argument(
        "--per-channel", action="store_true", help="INT8 weights quantised per channel"
    )

    profile = sub.add_parser(
        "profile", help="measure a model's items/s and latency on a live OIP target (a table)"
    )
    profile.add_argument("--url", required=True, help="the target, e.g. http://127.0.0.1:8101")
    profile.add_argument("--model", required=True)
    profile.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (1,8,32)")
    profile.add_argument("--concurrency", default="1,4", help="clients, comma-separated (1,4)")
    profile.add_argument("--requests", type=int, default=200, help="per cell, at most (200)")
    profile.add_argument("--seconds", type=float, default=10.0, help="per cell, at most (10)")
    profile.add_argument(
        "--accelerator", help="the target's accelerator as gpufan.yaml names it (default: cpu "
        "when the target runs on the CPU provider)",
    )  # fmt: skip
    profile.add_argument("--target", help="the target's name in the table (default: the URL)")
    profile.add_argument("--host", help="the host's name in the table (default: the URL's)")
    profile.add_argument(
        "--input", action="append", metavar="NAME=DIMS",
        help="shapes for inputs with dynamic dims beyond the batch axis",
    )  # fmt: skip
    profile.add_argument("--token-env", help="environment variable holding the bearer token")
    profile.add_argument(
        "--out", type=Path, help="the table; {repository}/{model}/profile.csv is where the cost "
        "model reads it (default: print)",
    )  # fmt: skip

    targets = sub.add_parser(
        "targets", help="write gpufan.yaml targets from `terraform output -json`"
    )
    targets.add_argument(
        "--from-terraform",
        type=Path,
        required=True,
        dest="terraform",
        help="the JSON that `terraform output -json` printed",
    )
    targets.add_argument("--out", type=Path, help="write here (default: print)")

    autoscale = sub.add_parser("autoscale", help="forecast load and reconcile warm capacity")
    autoscale.add_argument("--config", type=Path, help="gpufan.yaml (default: the embedded demo)")
    autoscale.add_argument("--once", action="store_true", help="one control-loop pass, then exit")
    autoscale.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")

    simulate = sub.add_parser("simulate", help="replay a day of load against the baselines")
    simulate.add_argument("--hours", type=float, default=24.0)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument(
        "--trace",
        type=Path,
        help="CSV to replay: timestamp,requests | timestamp[,...] (a request a row) | "
        "minute,items | Azure Functions 2019 HashOwner,HashApp,HashFunction,Trigger,1..1440",
    )
    simulate.add_argument(
        "--scale", type=float, default=1.0, help="multiply the trace's load (default 1)"
    )
    simulate.add_argument("--config", type=Path, help="gpufan.yaml with the fleet to simulate")
    simulate.add_argument(
        "--spot-record",
        help="reclaim every spot unit as this bundled preemption record did (a proxy), e.g. "
        "aws:p3.2xlarge; default: each unit's own kind's record, else a constant rate",
    )
    simulate.add_argument(
        "--out",
        type=Path,
        default=Path("simulation"),
        help="folder for the PNG plot and the table (simulation)",
    )

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
        from gpu_containers import require_onnxruntime

        try:
            require_onnxruntime("gpufan worker")
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 2
        from gpu_containers.worker import main as worker_main

        return worker_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from core.cli.serve import run_serve

            return run_serve(
                args.config,
                host=args.host,
                port=args.port,
                workers=args.workers,
                grpc_port=args.grpc_port,
                processes=args.processes,
            )
        if args.command in _COMMANDS:
            module, function = _COMMANDS[args.command].split(":")
            return int(getattr(importlib.import_module(module), function)(args))
        from core.cli.demo import run_demo

        return run_demo(workers=args.workers, chaos=not args.no_chaos)
    except (ConfigError, ClientError) as e:
        print(f"gpufan {args.command}: {e}", file=sys.stderr)
        return 2
    except GpufanError as e:
        print(f"gpufan {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
