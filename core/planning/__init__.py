"""Planning: deciding where a request runs, with no I/O and no clock.

Holds model profiles, the accelerator table, geography, the estimator (cost and latency with
breakdowns), request limits parsed from parameters, shard sizing/split/merge, the ``Placer``
protocol with its price-order rule, and the cost placer. ``costmodel.CostModel`` is the one
stateful learner here: it folds measured shard times into throughput (the caller passes the
time). Imports ``core.wire.tensors``, ``core.pricing`` values, ``core.config`` and ``core.errors``;
never ``dispatch``, ``backends``, ``frontdoor`` or ``cli`` — placers read a ``FleetLoads``
snapshot, not live health.
"""
