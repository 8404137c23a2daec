"""gpufan core: price, place, shard, fan out and merge ONNX inference across GPU targets.

``import core`` pulls in no cloud SDK; each backend imports its own lazily.
"""

__version__ = "0.1.0"
