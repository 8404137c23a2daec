"""The one-shard relay: a request that fits one shard goes to its OIP target as it arrived.

Most requests a front door sees are small. For them ``Fanout``'s machinery (a queue, a task per
target, a watch heap) and aiohttp cost more than the model, so a request that arrived over REST
(``InferRequest.wire``), fits one shard, and is placed on a target whose backend relays
(``core.backends.base.Relaying``: an OIP server over plain HTTP) is sent there byte for byte over
``core.wire.h1``; its answer is decoded once for the checks (views of the reply, no copy) and
passed on as the target wrote it when every output is binary (``InferResponse.written``).

It keeps ``Fanout``'s rules for one shard on its happy path: the same placer (whose one-shard
memo makes a repeat decision nearly free), the target's slot, in-flight count, breaker and
latency window, the same output checks, and a 4xx from the target is still the caller's
mistake. Anything off that path is handed back to ``Fanout`` (a ``Handover``): a failure is
recorded against its target, which the request's next placement avoids, and counts in the retry
budget and the report; a shard unanswered at its hedge delay, when another target could take it
and the hedge budget allows, is abandoned and sent elsewhere, a hedge that cancels the first
attempt instead of racing it (the report shows the cancelled attempt).

gpufan's own ``parameters`` (``slo_ms``, ``clouds`` ...: ``core.planning.limits.PARAMETERS``)
are not sent to servers that may reject them: a binary request that carries them travels with
them taken out of its JSON header (its tensors still sent as they arrived); a JSON one, whose
data is in that header, takes the full path. Any other parameter but ``RELAYED_PARAMETERS``
(what a target needs) sends the request the full path too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from core.backends.base import (
    Relaying,
    ShardFailed,
    ShardOk,
    ShardOutcome,
    target_fault,
)
from core.config import Target
from core.dispatch.fanout import Attempt, Fleet, check_outputs, describe
from core.errors import ClientError, GpufanError
from core.planning.limits import PARAMETERS, Constraints
from core.planning.shards import Shard
from core.wire.client import infer_result
from core.wire.h1 import Abandoned, H1Reply, Patience
from core.wire.tensors import BinaryOutputs, InferRequest, Tensor

__all__ = ["RELAYED_PARAMETERS", "Handover", "Relay", "Relayed"]

RELAYED_PARAMETERS = frozenset({"binary_data_output"})
_GPUFAN = frozenset(PARAMETERS)  # the front door's to read, never a target's


@dataclass(frozen=True, slots=True)
class Relayed:
    """The request's answer, from its one attempt."""

    outputs: tuple[Tensor, ...]
    attempt: Attempt
    explanation: dict[str, Any]
    written: BinaryOutputs | None  # the outputs as the target wrote them, passed on as they are


@dataclass(frozen=True, slots=True)
class Handover:
    """The relay's attempt did not answer: ``Fanout`` takes the request from here (``error``
    None: abandoned at its hedge delay)."""

    attempt: Attempt
    error: GpufanError | None
    explanation: dict[str, Any]


class Relay:
    """Runs one-shard requests straight to their target; see the module docstring."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._relaying: dict[str, bool] = {}  # backend name -> whether it relays at all

    @staticmethod
    def wants(request: InferRequest) -> bool:
        """Whether ``request`` can travel as it arrived (less gpufan's parameters)."""
        wire = request.wire
        if wire is None:
            return False
        others = request.parameters.keys() - RELAYED_PARAMETERS
        return not others or (wire.header_length is not None and others <= _GPUFAN)

    def _backend(self, target: Target) -> Relaying | None:
        backend = self._fleet.backends[target.backend]
        relaying = self._relaying.get(target.backend)
        if relaying is None:
            relaying = self._relaying[target.backend] = isinstance(backend, Relaying)
        if relaying and backend.relays(target):  # type: ignore[attr-defined]
            return backend  # type: ignore[return-value]
        return None

    async def run(
        self,
        model: str,
        version: str | None,
        request: InferRequest,
        shard: Shard,
        *,
        deadline: float,
        constraints: Constraints | None,
    ) -> Relayed | Handover | None:
        """Place ``shard`` (the whole request) and relay it; None: its target does not relay
        (nothing was sent; ``Fanout`` places it afresh).

        Raises:
            NoFeasibleTarget: no target may run it (as ``Fanout.launch`` would).
            ClientError: the target refused it with a 4xx that is the caller's mistake.
        """
        fleet = self._fleet
        placement = fleet.placer(model, [shard], fleet.health, constraints=constraints)
        (name,) = placement.groups
        target = fleet.targets[name]
        backend = self._backend(target)
        wire = request.wire
        if backend is None or wire is None:
            return None
        if not request.parameters.keys().isdisjoint(_GPUFAN):
            wire = wire.without_parameters(_GPUFAN)  # wants(): a binary body, so never None
            if wire is None:
                return None
        state = fleet.health[name]
        launched = fleet.clock()
        left = deadline - launched
        fleet.hedges.earn(1)
        patience = None
        if fleet.hedging.enabled:
            delay_s = fleet.hedging.delay_s(state.p95_s(), left)
            patience = Patience(delay_s, lambda: self._hedgeable(model, name))
        state.begin(1)
        try:
            async with state.slots:
                started = time.perf_counter()
                try:
                    reply = await backend.relay(
                        target, model, version, wire, max(min(target.timeout_s, left), 1e-3),
                        patience,
                    )  # fmt: skip
                except Abandoned as e:
                    ms = (time.perf_counter() - started) * 1000
                    state.record_stall(launched)
                    state.release(1)
                    fleet.hedges.spend()
                    why = f"cancelled: {e}, past its hedge delay; sent elsewhere"
                    attempt = Attempt(name, False, why, ms, cancelled=True)
                    return Handover(attempt, None, placement.explanation)
                except GpufanError as e:
                    outcome: ShardOutcome = ShardFailed(
                        shard, name, e, time.perf_counter() - started
                    )
                else:
                    elapsed_s = time.perf_counter() - started
                    answered, written = _outcome(reply, target, shard, elapsed_s)
                    outcome = check_outputs(answered, request.outputs, None)
        except BaseException:  # cancelled (the caller left): nothing said about the target
            state.release(1)
            raise
        state.record(outcome, fleet.clock() - launched)
        ms = outcome.elapsed_s * 1000
        if isinstance(outcome, ShardOk):
            attempt = Attempt(name, True, None, ms, outcome.cold_start)
            return Relayed(outcome.outputs, attempt, placement.explanation, written)
        if isinstance(outcome.error, ClientError):
            raise outcome.error
        attempt = Attempt(name, False, describe(outcome.error), ms)
        return Handover(attempt, outcome.error, placement.explanation)

    def _hedgeable(self, model: str, busy: str) -> bool:
        """Whether a straggler on ``busy`` may be sent elsewhere now: hedging's budget allows,
        and another target serving ``model`` lets traffic through."""
        fleet = self._fleet
        if not fleet.hedges.affords():
            return False
        return any(
            name != busy and target.serves(model) and fleet.health.allows(name)
            for name, target in fleet.targets.items()
        )


def _outcome(
    reply: H1Reply, target: Target, shard: Shard, elapsed_s: float
) -> tuple[ShardOutcome, BinaryOutputs | None]:
    """The relayed reply as the shard's outcome, errors mapped as ``HttpBackend``'s are, and
    its outputs as written when they are all binary."""
    try:
        result = infer_result(
            reply.status, reply.body, reply.headers, target.name, keep_written=True
        )
    except GpufanError as e:
        return ShardFailed(shard, target.name, target_fault(target, e), elapsed_s), None
    return ShardOk.answered(shard, target.name, result, elapsed_s), result.written
