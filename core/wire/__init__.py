"""The wire: the Open Inference Protocol on both sides, and the Batch staging format.

Holds the tensor codec (JSON and binary), the framework-neutral HTTP request/response values,
the OIP routes and the ``DataPlane`` protocol, the OIP client and its pooled session, the
relay's lean HTTP/1.1 client, the local ASGI server, and the S3 layout a Batch job and its
backend share. Imports only ``core.errors`` and ``core.config``: both the front door and the
GPU worker stand on it.
"""
