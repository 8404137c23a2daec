"""Data-transfer prices: which rate a transfer pays, from the bundled egress table.

Ingress is free on AWS, Google Cloud and Azure, so a transfer is charged by its *source* only:

- same cloud, same region: the cloud's ``same_region`` row if the table has one, else free;
- same cloud, another region: the source cloud's ``inter_region`` rate;
- another cloud, on-prem or the internet: the source cloud's ``internet`` rate;
- from ``onprem`` or ``local``: nothing (the user's own link, which gpufan does not price).

Each figure is the *first paid tier* of the source's table: monthly free allowances (AWS 100 GB,
Azure 100 GB, GCP 1 GiB) and volume tiers depend on an account's whole month of traffic, which one
request cannot know, so a per-request estimate takes the rate a marginal gigabyte most often pays.
Cross-AZ traffic inside one AWS region ($0.01/GB each way) is not modelled.

A source region the table does not list uses the cloud's row for another region (say, AWS
eu-west-1 uses the us-east-1 figure), and the rate's note says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core.errors import ConfigError

__all__ = ["BYTES_PER_GB", "EgressRate", "EgressRow", "egress_rate"]

Destination = Literal["same_region", "inter_region", "internet"]
_SELF_HOSTED = frozenset({"onprem", "local"})
_ANY_REGION = "*"  # a row that holds for every region of its cloud
# Decimal GB: the clouds bill "GB", and GCP's GiB is 7.4% larger, so dividing by 1e9 errs dear.
BYTES_PER_GB = 1e9


@dataclass(frozen=True, slots=True)
class EgressRow:
    """One tier of one cloud's egress table, as the bundled CSV holds it (tiers in file order)."""

    cloud: str
    region: str
    destination: Destination
    usd_per_gb: float
    tier_note: str
    source: str
    as_of: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class EgressRate:
    """What one gigabyte leaving a source costs, and where the figure comes from.

    ``as_of`` is empty for a rule-made zero (on-prem, or a same-region transfer with no row).
    """

    usd_per_gb: float
    source: str
    as_of: str
    note: str = ""

    def cost_usd(self, n_bytes: int) -> float:
        """The price of moving ``n_bytes`` at this rate."""
        return self.usd_per_gb * n_bytes / BYTES_PER_GB


def egress_rate(
    rows: Sequence[EgressRow], src_cloud: str, src_region: str, dst_cloud: str, dst_region: str
) -> EgressRate:
    """The per-GB rate of a transfer from ``src`` to ``dst`` (see the module docstring).

    ``dst_cloud`` may be anything that is not a cloud of the table (``internet``, ``client``,
    ``onprem``): it is then charged at the source's internet rate.

    Raises:
        ConfigError: the table has no figures for ``src_cloud``, or none for the destination kind.
    """
    if src_cloud in _SELF_HOSTED:
        return EgressRate(0.0, "rule: leaves the user's own link", "", "not priced by gpufan")
    if src_cloud != dst_cloud:
        destination: Destination = "internet"
    elif src_region != dst_region:
        destination = "inter_region"
    else:
        destination = "same_region"
    cloud_rows = [r for r in rows if r.cloud == src_cloud]
    if not cloud_rows:
        clouds = ", ".join(sorted({r.cloud for r in rows}))
        raise ConfigError(f"no egress figures for cloud {src_cloud!r}; the table has: {clouds}")
    tiers, fallback_note = _tiers(cloud_rows, src_region, destination)
    if not tiers:
        if destination == "same_region":
            note = f"the table has no same-region row for {src_cloud}"
            return EgressRate(0.0, "rule: transfer within one region is free", "", note)
        raise ConfigError(f"no {destination} egress figure for {src_cloud}")
    # The first paid tier; all-free tables (same region) keep their single zero row.
    row = next((r for r in tiers if r.usd_per_gb > 0), tiers[0])
    note = "; ".join(n for n in (f"tier: {row.tier_note}", row.note, fallback_note) if n)
    return EgressRate(row.usd_per_gb, row.source, row.as_of, note)


def _tiers(
    cloud_rows: Sequence[EgressRow], region: str, destination: Destination
) -> tuple[list[EgressRow], str]:
    """The tiers for ``destination`` out of ``region``: its own rows, else the any-region rows,
    else the rows of the first region the table lists (with a note naming the substitute)."""
    rows = [r for r in cloud_rows if r.destination == destination]
    for wanted in (region, _ANY_REGION):
        own = [r for r in rows if r.region == wanted]
        if own:
            return own, ""
    if not rows:
        return [], ""
    other = rows[0].region
    note = f"no {rows[0].cloud} figure for {region}; used {other}'s"
    return [r for r in rows if r.region == other], note
