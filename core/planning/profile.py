"""What one item costs a model: the value the cost model divides by.

Kept apart from ``graphcost``, which derives it from an ONNX graph, so that the front door (the
cost model, the accelerator table) holds profiles without importing ``onnx``: a serverless front
door whose models give ``flops_per_item`` never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["ModelProfile", "profile_report"]


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What one item costs a model, from its graph.

    ``peak_activation_bytes_per_item`` is the largest sum of live tensors (graph inputs,
    intermediates and outputs; initialisers excluded) along the graph's node order, each tensor
    live from the node that makes it to its last reader: the memory a runtime without buffer
    reuse needs beside the weights.
    """

    flops_per_item: float
    param_bytes: int
    input_bytes_per_item: int
    output_bytes_per_item: int
    peak_activation_bytes_per_item: int
    flops_by_op: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    unprofiled_ops: tuple[str, ...] = ()
    assumed_unit_dims: tuple[str, ...] = ()
    batched: bool = True
    bounded: tuple[str, ...] = ()  # what makes the count an upper bound (If, Loop)

    @property
    def confidence(self) -> str:
        """``exact``: every op counted at known shapes; ``bounded``: counted, but some dims were
        assumed 1 (a lower bound) or a branch or loop was bounded; ``incomplete``: some ops
        could not be counted at all (``notes`` names them)."""
        if self.unprofiled_ops:
            return "incomplete"
        return "bounded" if self.assumed_unit_dims or self.bounded else "exact"

    @property
    def notes(self) -> tuple[str, ...]:
        """Why the confidence is not ``exact``, one reason a line."""
        notes = []
        if self.unprofiled_ops:
            notes.append(f"not counted: {', '.join(self.unprofiled_ops)}")
        if self.assumed_unit_dims:
            notes.append(
                f"dims assumed 1 (give the request's shapes): {', '.join(self.assumed_unit_dims)}"
            )
        notes.extend(self.bounded)
        return tuple(notes)


def profile_report(profile: ModelProfile | None) -> dict[str, object]:
    """The profile as ``gpufan plan --json`` and the placement report carry it, under these
    names; a model without one says its figures are unknown rather than zero."""
    if profile is None:
        return {
            "flops_per_item": None,
            "bytes_in_per_item": None,
            "bytes_out_per_item": None,
            "profile_confidence": "unknown",
            "profile_notes": ["no graph to profile: compute time unknown"],
        }
    return {
        "flops_per_item": profile.flops_per_item,
        "bytes_in_per_item": profile.input_bytes_per_item,
        "bytes_out_per_item": profile.output_bytes_per_item,
        "profile_confidence": profile.confidence,
        "profile_notes": list(profile.notes),
    }
