"""IOBinding over preallocated device buffers: one host->device and one device->host copy a batch.

A plain ``InferenceSession.run`` on the CUDA EP allocates device memory for every input and
output of every call. Here each input signature the worker sees (names, shapes, dtypes, outputs
asked for) gets its buffers once: the first call binds the inputs to fresh device values and lets
onnxruntime allocate the outputs, which are then bound in place; every later call of that
signature copies its inputs into the same device buffers (``update_inplace``) and reads the
outputs back (a host copy the caller owns, so nothing handed to a request is ever overwritten:
``numpy()`` of a CUDA value copies, of a CPU value is a view, copied here). Strings and
non-tensor outputs cannot live on a device: such models run unbound.
At most ``max_signatures`` sets are kept, the oldest dropped first.

With ``cuda_graphs`` (the session made with the CUDA EP's ``enable_cuda_graph``) each signature's
runs carry their own ``gpu_graph_id``, so onnxruntime captures one graph per shape over that
signature's fixed buffers and replays it. An id is never given to another signature: a dropped
set's graph still points at the dropped buffers. Past ``max_signatures`` ids a new signature runs
without a graph (id -1), so captured graphs stay bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

__all__ = ["DeviceBuffers", "bindable"]


def bindable(session: ort.InferenceSession) -> bool:
    """Whether every input and output is a numeric tensor (what a device buffer can hold)."""
    args = [*session.get_inputs(), *session.get_outputs()]
    return all(a.type.startswith("tensor(") and a.type != "tensor(string)" for a in args)


@dataclass
class _Slot:
    binding: ort.IOBinding
    inputs: dict[str, ort.OrtValue]
    outputs: list[ort.OrtValue]
    options: ort.RunOptions | None  # the signature's gpu_graph_id, with CUDA graphs


class DeviceBuffers:
    """Runs one session through IOBinding, with a buffer set per input signature."""

    def __init__(
        self,
        session: ort.InferenceSession,
        device: str,
        device_id: int = 0,
        *,
        max_signatures: int = 16,
        cuda_graphs: bool = False,
    ) -> None:
        self._session = session
        self._device = device
        self._id = device_id
        self._max = max_signatures
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._graphs = cuda_graphs
        self._graph_ids = 0  # given out so far, from 1 (onnxruntime reserves 0)

    @property
    def signatures(self) -> int:
        """Buffer sets held now (tests and metadata read it)."""
        return len(self._slots)

    @property
    def graph_ids(self) -> int:
        """CUDA graph ids given out (one a signature, never reused)."""
        return self._graph_ids

    def run(self, inputs: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        arrays = {n: np.ascontiguousarray(a) for n, a in inputs.items()}
        key = (tuple((n, a.shape, a.dtype.str) for n, a in sorted(arrays.items())), tuple(names))
        slot = self._slots.get(key)
        if slot is None:
            slot = self._bind(arrays, names)
            self._slots[key] = slot
            if len(self._slots) > self._max:
                self._slots.popitem(last=False)
        else:
            self._slots.move_to_end(key)
            for n, a in arrays.items():
                slot.inputs[n].update_inplace(a)  # the one host->device copy
            self._session.run_with_iobinding(slot.binding, slot.options)
        # device->host: a new host array from a device buffer; on the CPU device numpy() is a
        # view of the reused buffer, so the caller gets a copy of its own.
        if self._device == "cpu":
            return {n: v.numpy().copy() for n, v in zip(names, slot.outputs, strict=True)}
        return {n: v.numpy() for n, v in zip(names, slot.outputs, strict=True)}

    def _bind(self, arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> _Slot:
        binding = self._session.io_binding()
        values = {
            n: ort.OrtValue.ortvalue_from_numpy(a, self._device, self._id)
            for n, a in arrays.items()
        }
        for n, v in values.items():
            binding.bind_ortvalue_input(n, v)
        for n in names:
            binding.bind_output(n, self._device, self._id)
        # onnxruntime sizes and allocates the outputs; not captured: they are bound anew below
        self._session.run_with_iobinding(binding, self._options(-1) if self._graphs else None)
        outputs = list(binding.get_outputs())
        binding.clear_binding_outputs()
        for n, v in zip(names, outputs, strict=True):
            binding.bind_ortvalue_output(n, v)  # later runs write into these in place
        options = None
        if self._graphs:
            graph = -1
            if self._graph_ids < self._max:
                self._graph_ids += 1
                graph = self._graph_ids
            options = self._options(graph)
        return _Slot(binding, values, outputs, options)

    @staticmethod
    def _options(graph_id: int) -> ort.RunOptions:
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))  # -1: no graph this run
        return options
