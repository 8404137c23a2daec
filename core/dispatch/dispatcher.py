"""Serve one request over many targets: split, fan out, re-dispatch failures, merge in order.

``Dispatcher.dispatch`` is the whole request path below the front door: size the shards
(``core.planning.shards``) to the free slots of the healthy targets, run them through
``core.dispatch.fanout.Fanout`` (which places them, re-dispatches failures within the retry budget
and the deadline, hedges stragglers within the hedge budget, and takes each shard's answer once),
then merge in shard order and report where every shard ran.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.backends.base import Backend
from core.config import Policy, Target
from core.dispatch.fanout import Attempt, Clock, Fanout, Fleet, Sleep
from core.dispatch.health import TargetHealth
from core.dispatch.hedging import HedgeBudget, HedgePolicy
from core.dispatch.relay import Relay, Relayed
from core.dispatch.retry import RetryPolicy
from core.errors import ConfigError
from core.planning.limits import Limits
from core.planning.placer import Placer, Preparing, place
from core.planning.shards import Shard, batch_size, merge, shard_sizes, split, unsplittable, whole
from core.wire.tensors import BinaryOutputs, InferRequest, Tensor

__all__ = ["Attempt", "DispatchResult", "Dispatcher", "ShardReport"]


class _RequestIds:
    """Request ids unique across processes without a uuid4 per request (a getrandom syscall
    each): a random prefix per process, renewed in a forked child (``gpufan serve
    --processes``), and a serial."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._serial = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._serial):x}"


_request_id = _RequestIds()


@dataclass(frozen=True, slots=True)
class ShardReport:
    """Where a shard finally ran, and every attempt it took to get there."""

    index: int
    items: int
    target: str
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """The merged outputs of a request and how they were obtained."""

    outputs: tuple[Tensor, ...]
    shards: tuple[ShardReport, ...]
    phases_ms: Mapping[str, float]  # plan, dispatch, merge
    redispatched: int
    duplicates_dropped: int
    request_id: str
    placement: Mapping[str, Any] | None = None  # the cost model's explanation, when there is one
    hedges: int = 0  # stragglers sent to a second target
    hedges_won: int = 0  # ... whose second attempt answered first
    hedge_usd: float = 0.0  # the cost model's estimate for the hedges' placements
    written: BinaryOutputs | None = None  # a relayed answer's outputs as the target wrote them

    @property
    def items(self) -> int:
        return sum(s.items for s in self.shards)

    @property
    def busy_s(self) -> float:
        """Seconds targets spent on this request's shards, failed and cancelled attempts included
        (they held a GPU too)."""
        return sum(a.ms for s in self.shards for a in s.attempts) / 1000

    @property
    def estimated_usd(self) -> float | None:
        """The cost model's estimate for its placement and its hedges; None when it did not place
        the request."""
        usd = self.placement.get("usd") if self.placement else None
        return float(usd) + self.hedge_usd if usd is not None else None

    def report(self) -> dict[str, Any]:
        """The placement report as JSON-able values (the wire serialises it once)."""
        return {
            "request_id": self.request_id,
            "shards": [
                {
                    "index": s.index,
                    "items": s.items,
                    "target": s.target,
                    "attempts": [a.report() for a in s.attempts],
                }
                for s in self.shards
            ],
            "phases_ms": {k: round(v, 3) for k, v in self.phases_ms.items()},
            "redispatched": self.redispatched,
            "duplicates_dropped": self.duplicates_dropped,
            "hedges": self.hedges,
            "hedges_won": self.hedges_won,
            **({"placement": dict(self.placement)} if self.placement else {}),
        }


class Dispatcher:
    """Runs requests over a fixed set of targets; owns their ``TargetHealth`` (``.health``).

    Args:
        targets: every target requests may use.
        backends: backend name -> backend instance; every target's ``backend`` must be here.
        policy: shard size, retry budget, deadline, breaker and hedging settings.
        placer: the placement rule (``core.planning.placer.place`` unless a cost model is set).
        unbatched: models with no batch axis (``max_batch_size: 0``, as stateful models): each
            request runs whole, as one shard, instead of being split.
        clock, sleep, rng: injected so tests control time and jitter.

    Raises:
        ConfigError: a target names a backend that is not in ``backends``.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        backends: Mapping[str, Backend],
        policy: Policy,
        *,
        placer: Placer = place,
        unbatched: Collection[str] = (),
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        missing = sorted({t.backend for t in targets} - set(backends))
        if missing:
            raise ConfigError(
                f"targets use backends with no instance: {', '.join(missing)}; "
                f"have: {', '.join(sorted(backends)) or 'none'}"
            )
        self.health = TargetHealth(targets, policy, clock=clock)
        self._policy = policy
        self._unbatched = frozenset(unbatched)
        self._fleet = Fleet(
            targets={t.name: t for t in targets},
            backends=backends,
            health=self.health,
            placer=placer,
            clock=clock,
            sleep=sleep,
            rng=rng or random.Random(),
            hedging=HedgePolicy.from_policy(policy),
            hedges=HedgeBudget(policy.hedge_budget, policy.hedge_burst),
        )
        self._relay = Relay(self._fleet)
        self._preparing = placer if isinstance(placer, Preparing) else None

    async def dispatch(
        self,
        model: str,
        version: str | None,
        request: InferRequest,
        *,
        limits: Limits | None = None,
        request_id: str | None = None,
    ) -> DispatchResult:
        """Run ``request`` on ``model`` within ``limits`` (None: the policy's, and the placer's
        default constraints).

        Raises:
            BadRequest: a split request's inputs disagree on the batch size, or it is empty.
            NoFeasibleTarget: no healthy target serves the model.
            ClientError: a target refused a shard with a 4xx (passed through unchanged).
            DispatchError: shards still failed after their attempts or the deadline ran out.
        """
        clock = self._fleet.clock
        retry = RetryPolicy.from_policy(
            self._policy,
            max_attempts=limits.max_attempts if limits else None,
            deadline_ms=limits.deadline_ms if limits else None,
        )
        started = clock()
        # Shard ids must be unique in the process; the caller's id is kept only for tracing.
        serial = _request_id()
        rid = f"{request_id}.{serial}" if request_id else serial
        if model in self._unbatched or unsplittable(request.inputs):
            shards = [whole(rid, request.inputs)]
        else:
            items = batch_size(request.inputs)
            policy = self._policy
            # fewer than two minimum shards: one shard whatever the free slots (shard_sizes)
            small = items < 2 * policy.min_shard_items
            slots = 1 if small else self.health.free_slots(model)
            sizes = shard_sizes(items, policy.max_shard_items, slots, policy.min_shard_items)
            shards = split(rid, request.inputs, sizes)
        constraints = limits.constraints if limits else None
        ahead = self._preparing.ahead(model, shards) if self._preparing is not None else None
        if ahead is not None:  # a graph profiled at new shapes: not on the loop that serves all
            await asyncio.to_thread(ahead)
        handover = None
        if len(shards) == 1 and self._relay.wants(request):
            relayed = await self._relay.run(
                model, version, request, shards[0], deadline=started + retry.deadline_s,
                constraints=constraints,
            )  # fmt: skip
            if isinstance(relayed, Relayed):
                return self._relayed(relayed, shards[0], rid, started)
            handover = relayed
        run = Fanout(
            self._fleet,
            model=model,
            version=version,
            outputs=request.outputs,
            retry=retry,
            constraints=constraints,
            started=started,
        )
        try:
            if handover is None:
                run.launch(shards)
            else:
                if handover.explanation:
                    run.placements.append(handover.explanation)
                run.take_over(shards[0], handover.attempt, handover.error)
            planned = clock()
            outputs = await run.gather(len(shards))
        finally:
            await run.cancel()
        gathered = clock()
        merged = merge(shards, outputs)
        done = clock()
        return DispatchResult(
            outputs=merged,
            shards=tuple(
                ShardReport(s.index, s.items, run.final[s.id], tuple(run.attempts[s.id]))
                for s in shards
            ),
            phases_ms={
                "plan": (planned - started) * 1000,
                "dispatch": (gathered - planned) * 1000,
                "merge": (done - gathered) * 1000,
            },
            redispatched=run.redispatched,
            duplicates_dropped=run.duplicates,
            request_id=rid,
            placement=run.placements[0] if run.placements else None,
            hedges=run.hedges,
            hedges_won=run.hedges_won,
            hedge_usd=run.hedge_usd,
        )

    def _relayed(self, relayed: Relayed, shard: Shard, rid: str, started: float) -> DispatchResult:
        """The result of a request the relay answered in one attempt."""
        done = self._fleet.clock()
        return DispatchResult(
            outputs=relayed.outputs,
            shards=(ShardReport(0, shard.items, relayed.attempt.target, (relayed.attempt,)),),
            phases_ms={"plan": 0.0, "dispatch": (done - started) * 1000, "merge": 0.0},
            redispatched=0,
            duplicates_dropped=0,
            request_id=rid,
            placement=relayed.explanation or None,
            written=relayed.written,
        )
