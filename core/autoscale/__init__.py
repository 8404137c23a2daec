"""The autoscaler: forecast load, decide warm capacity, reconcile it on each cloud.

Pure in the middle, I/O at the edges:

- ``forecast``: naive, seasonal-naive, Holt-Winters and MSTL candidates, the one that leads a
  rolling backtest chosen per series, with its own errors;
- ``headroom``: the least (or cheapest) capacity whose predicted share of requests inside the SLO
  meets the target, from those errors, a fluid queue and the burst units' cold start;
- ``capacity``: the cheapest mix of warm instances that covers it, with an on-demand floor, a
  spot reserve and a pre-warm lead equal to each target's cold start;
- ``simulate`` (+ ``trace``): a trace replayed against static, reactive, reactive-with-headroom,
  MArk-style and spot-only baselines;
- ``preemption``: observed spot lifetimes (bundled AWS and GCP traces) and a sampler of them;
- ``history``: the per-model request history (SQLite, DynamoDB) and the front door's recorder;
- ``reconcile``: one reconciler per backend kind, idempotent, rate-limited, with a dry run;
- ``loop``: one pass, read history -> forecast -> plan -> reconcile.

Importing this package imports nothing heavy; each module brings its own dependencies, and the
cloud SDKs are imported only inside the calls that use them.
"""
