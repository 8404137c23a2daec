"""Thin adapters from each cloud's function runtime (AWS Lambda, Cloud Functions, Azure Functions)
to ``core.wire.oip.OipHandler`` over the front door built by ``core.frontdoor.runtime``.
Scoring, sharding and retry logic never live here."""
