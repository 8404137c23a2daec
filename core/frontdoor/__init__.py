"""The front door: composition of everything below into a serving process.

Holds the front door's data plane (``service.FrontDoor``), the runtime that assembles it from
settings (backends, cost model, live prices, local workers), the report hooks (history
recording), event jobs over object storage and the control-loop tick. May import every wing of
``core`` except ``cli``; ``functions/`` and ``core.cli`` stand on it.
"""
