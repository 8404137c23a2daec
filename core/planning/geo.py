"""Where regions are, and what the network between them is assumed to cost in time.

Pure data and lookups. The figures are *assumptions* the scorer starts from — a measured
``Target.rtt_ms`` replaces them — and each one says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Link", "continent", "link"]

# Region name -> continent, by the naming scheme of each cloud (AWS "eu-west-1", GCP
# "europe-west4", Azure "westeurope"). Checked in order; the first match wins.
_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "aws": (("us-", "na"), ("ca-", "na"), ("eu-", "eu"), ("il-", "eu"), ("ap-", "ap"),
            ("sa-", "sa"), ("me-", "me"), ("af-", "af")),
    "gcp": (("us-", "na"), ("northamerica-", "na"), ("europe-", "eu"), ("asia-", "ap"),
            ("australia-", "ap"), ("southamerica-", "sa"), ("me-", "me"), ("africa-", "af")),
}  # fmt: skip
_AZURE_WORDS = (
    ("europe", "eu"), ("uk", "eu"), ("france", "eu"), ("germany", "eu"), ("sweden", "eu"),
    ("norway", "eu"), ("switzerland", "eu"), ("poland", "eu"), ("italy", "eu"), ("spain", "eu"),
    ("canada", "na"), ("us", "na"), ("brazil", "sa"), ("asia", "ap"), ("australia", "ap"),
    ("japan", "ap"), ("korea", "ap"), ("india", "ap"), ("uae", "me"), ("qatar", "me"),
    ("southafrica", "af"),
)  # fmt: skip


def continent(cloud: str, region: str) -> str | None:
    """The continent code of a region (``na``, ``eu``, ``ap``, ``sa``, ``me``, ``af``), ``local``
    for on-prem/local targets, or None when the name follows no known scheme."""
    if cloud in ("local", "onprem"):
        return "local"
    region = region.lower()
    if cloud == "azure":
        return next((c for word, c in _AZURE_WORDS if word in region), None)
    return next((c for prefix, c in _PREFIXES.get(cloud, ()) if region.startswith(prefix)), None)


@dataclass(frozen=True, slots=True)
class Link:
    """The assumed network between two places: round trip and sustained bandwidth."""

    rtt_s: float
    bytes_per_s: float
    kind: str  # same-host | same-region | same-continent | intercontinental | unknown


# Assumptions (not measurements of this deployment):
# - same host: ~0.5 ms a call and >1 GB/s (loopback through a Python HTTP stack; perf-anchors.md:
#   ~0.3 ms per request including a Python client);
# - same region: ~1 ms RTT inside a cloud region, 10 Gbit/s per flow on current instance types
#   (AWS/GCP document 10+ Gbit/s single-flow within a placement/zone);
# - same continent: ~35 ms (public inter-region latency tables such as cloudping.co put US east-west
#   at 60-70 ms and neighbouring regions at 10-30 ms), 1 Gbit/s for one TCP flow;
# - intercontinental: ~120 ms (US-EU ~70-90 ms, US-Asia 150-200 ms), 500 Mbit/s for one flow.
_LINKS = {
    "same-host": Link(0.0005, 2.0e9, "same-host"),
    "same-region": Link(0.001, 1.25e9, "same-region"),
    "same-continent": Link(0.035, 1.25e8, "same-continent"),
    "intercontinental": Link(0.120, 6.25e7, "intercontinental"),
    "unknown": Link(0.150, 6.25e7, "unknown"),
}


def link(src_cloud: str, src_region: str, dst_cloud: str, dst_region: str) -> Link:
    """The assumed link between two places (symmetric)."""
    a, b = continent(src_cloud, src_region), continent(dst_cloud, dst_region)
    if a == "local" and b == "local":
        return _LINKS["same-host"]
    if src_cloud == dst_cloud and src_region == dst_region:
        return _LINKS["same-region"]
    if a is None or b is None or "local" in (a, b):  # where an on-prem box is, we can't tell
        return _LINKS["unknown"]
    if a == b:
        return _LINKS["same-continent"]
    return _LINKS["intercontinental"]
