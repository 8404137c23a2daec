"""``gpufan optimize``: precision variants of one model version, admitted within a budget.

The work is ``gpu_containers.optimize`` (it runs onnxruntime); this prints what was written and
what was refused, with the figures either way.
"""

from __future__ import annotations

import argparse

__all__ = ["run_optimize"]


def run_optimize(args: argparse.Namespace) -> int:
    """0 when at least one variant was written; 1 when every one was refused.

    Raises:
        ConfigError: onnxruntime is missing, no such repository, an unreadable set, or a
            budget that checks nothing.
        NotFound: no such model or version in the repository.
    """
    from gpu_containers import require_onnxruntime

    require_onnxruntime("gpufan optimize")
    from gpu_containers.optimize import Budget, optimize
    from gpu_containers.repository import Repository

    entry = Repository.load(args.model_repo).entry(args.model)
    path = entry.versions[entry.resolve(args.version)]
    budget = Budget(args.max_abs_error, args.max_rel_error, args.min_top1_agreement)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    outcomes = optimize(
        path, args.data, variants=variants, budget=budget, per_channel=args.per_channel
    )
    print(f"{path} against FP32 on {args.data} (second half; the first calibrates):")
    for o in outcomes:
        a = o.accuracy
        figures = (
            f"items={a.items} max_abs={a.max_abs_error:.3g} max_rel={a.max_rel_error:.3g} "
            f"top1={'n/a' if a.top1_agreement is None else f'{a.top1_agreement:.4f}'}"
            if a
            else "not measured"
        )
        verdict = f"written {o.path}" if o.accepted else f"refused: {o.reason}"
        print(f"  {o.variant:5} {figures}  {verdict}")
    return 0 if any(o.accepted for o in outcomes) else 1
