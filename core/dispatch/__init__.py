"""Dispatch: doing, per request — split, fan out, re-dispatch failures, merge, report.

Holds the ``Dispatcher``, the fan-out engine that takes each shard's answer once, the relay
that sends a one-shard request to its target as it arrived (and hands it to the fan-out when
that attempt fails), the retry policy, and ``TargetHealth`` (breakers, in-flight counts, EWMAs
refreshed by traffic). Imports ``core.backends`` (the ``Backend`` protocol), ``core.planning``,
``core.wire`` and below; never ``frontdoor``, ``autoscale`` or ``cli``.
"""
