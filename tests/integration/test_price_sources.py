"""Live price sources against loopback servers that answer like the real APIs, with paging.

The real clients do the talking: boto3's ``pricing`` and ``ec2`` clients, google-cloud-billing's
``CloudCatalogClient`` (REST transport, anonymous credentials) and aiohttp for Azure. Each fake
records what it was sent, so the tests check the filters, targets and page tokens as well as the
prices parsed; the ``PriceCache`` tests then make a source fail or hang and check the snapshot
stands in, flagged stale with its age.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from google.auth.credentials import AnonymousCredentials

from core.errors import PriceSourceError
from core.pricing import PriceCache, PriceKey, load_snapshot
from core.pricing.aws import AwsPriceSource
from core.pricing.azure import AzurePriceSource
from core.pricing.gcp import CLOUD_RUN_SERVICE, COMPUTE_SERVICE, GcpPriceSource

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials from the environment, and no profile or instance metadata to find."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an aiohttp app on 127.0.0.1:<free port>; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- AWS Price List Query API (JSON 1.1) -----------------------------------------------------


def aws_product(instance_type: str, region: str, usd: str, gpus: str) -> str:
    """One GetProducts ``PriceList`` item, as the JSON *string* the API returns."""
    sku = "SKU" + instance_type.replace(".", "")
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute Instance",
                "sku": sku,
                "attributes": {"instanceType": instance_type, "gpu": gpus, "regionCode": region},
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.TERMA": {
                        "offerTermCode": "TERMA",
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "priceDimensions": {
                            f"{sku}.TERMA.DIM1": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": usd},
                                "description": f"${usd} per On Demand Linux {instance_type} Hour",
                            }
                        },
                    }
                },
                # a reservation, dearer so the dearest-wins rule would show it if it leaked in
                "Reserved": {
                    f"{sku}.RES": {
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "priceDimensions": {
                            f"{sku}.RES.D": {"unit": "Hrs", "pricePerUnit": {"USD": "9.9900"}}
                        },
                    }
                },
            },
        }
    )


def pricing_app(seen: list[dict[str, Any]], status: int = 200) -> web.Application:
    """GetProducts: page 1 is empty with a NextToken (the API does that), page 2 has the item."""
    catalog = {("g4dn.xlarge", "us-east-1"): ("0.5370000000", "1")}

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        seen.append({"target": request.headers.get("X-Amz-Target"), "body": body})
        if status != 200:
            return web.json_response({"__type": "InternalErrorException"}, status=status)
        terms = {f["Field"]: f["Value"] for f in body["Filters"]}
        found = catalog.get((terms["instanceType"], terms["regionCode"]))
        if "NextToken" not in body:
            reply: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": [], "NextToken": "p2"}
        else:
            items = (
                [aws_product(terms["instanceType"], terms["regionCode"], *found)] if found else []
            )
            reply = {"FormatVersion": "aws_v1", "PriceList": items}
        return web.json_response(reply, content_type="application/x-amz-json-1.1")

    app = web.Application()
    app.router.add_post("/", handle)
    return app


# --- EC2 DescribeSpotPriceHistory (EC2 query protocol, XML) ----------------------------------


def spot_item(instance_type: str, az: str, usd: str, stamp: str) -> str:
    return (
        f"<item><instanceType>{instance_type}</instanceType>"
        f"<productDescription>Linux/UNIX</productDescription><spotPrice>{usd}</spotPrice>"
        f"<timestamp>{stamp}</timestamp><availabilityZone>{az}</availabilityZone></item>"
    )


def ec2_app(seen: list[dict[str, list[str]]]) -> web.Application:
    """Two pages, newest records first as the API sends them. Current prices: 1a 0.2200, 1b 0.3000
    (its older 0.1900 is what the lowest-of-all-records mistake would pick), 1c 0.2100 on page 2."""
    pages = {
        "": (
            spot_item("g4dn.xlarge", "us-east-1a", "0.2200", "2026-11-25T11:50:00.000Z")
            + spot_item("g4dn.xlarge", "us-east-1a", "0.2500", "2026-11-25T11:20:00.000Z")
            + spot_item("g4dn.xlarge", "us-east-1b", "0.3000", "2026-11-25T11:55:00.000Z")
            + spot_item("g4dn.xlarge", "us-east-1b", "0.1900", "2026-11-25T10:40:00.000Z"),
            "<nextToken>spot-p2</nextToken>",
        ),
        "spot-p2": (
            spot_item("g4dn.xlarge", "us-east-1c", "0.2100", "2026-11-25T11:40:00.000Z"),
            "",
        ),
    }

    async def handle(request: web.Request) -> web.Response:
        form = parse_qs((await request.read()).decode())
        seen.append(form)
        items, next_token = pages[form.get("NextToken", [""])[0]]
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>req-1</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet>"
            f"{next_token}</DescribeSpotPriceHistoryResponse>"
        )
        return web.Response(text=xml, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/", handle)
    return app


def aws_source(base: str, **kw: Any) -> AwsPriceSource:
    return AwsPriceSource(
        pricing_endpoint_url=base, ec2_endpoint_url=base, max_attempts=1, now=lambda: NOW, **kw
    )


async def test_aws_on_demand_follows_next_token_and_sends_the_term_filters(serve: Serve) -> None:
    seen: list[dict[str, Any]] = []
    base = await serve(pricing_app(seen))
    key = PriceKey("aws", "us-east-1", "g4dn.xlarge", "on_demand")

    [price] = await aws_source(base).fetch([key])

    assert (price.key, price.usd_per_hour, price.gpu_count, price.live) == (key, 0.537, 1, True)
    assert price.as_of == "2026-11-01T00:00:00Z"
    assert [s["target"] for s in seen] == ["AWSPriceListService.GetProducts"] * 2
    first, second = (s["body"] for s in seen)
    assert first["ServiceCode"] == "AmazonEC2" and first["FormatVersion"] == "aws_v1"
    assert {f["Field"]: (f["Type"], f["Value"]) for f in first["Filters"]} == {
        "instanceType": ("TERM_MATCH", "g4dn.xlarge"),
        "regionCode": ("TERM_MATCH", "us-east-1"),
        "operatingSystem": ("TERM_MATCH", "Linux"),
        "tenancy": ("TERM_MATCH", "Shared"),
        "preInstalledSw": ("TERM_MATCH", "NA"),
        "capacitystatus": ("TERM_MATCH", "Used"),
    }
    assert "NextToken" not in first and second["NextToken"] == "p2"


async def test_aws_spot_takes_the_lowest_current_price_over_the_azs(serve: Serve) -> None:
    seen: list[dict[str, list[str]]] = []
    base = await serve(ec2_app(seen))
    key = PriceKey("aws", "us-east-1", "g4dn.xlarge", "spot")

    [price] = await aws_source(base).fetch([key])

    assert price.usd_per_hour == 0.21 and "us-east-1c" in price.note
    assert price.as_of.startswith("2026-11-25T11:40")
    assert [s["Action"] for s in seen] == [["DescribeSpotPriceHistory"]] * 2
    first, second = seen
    assert first["InstanceType.1"] == ["g4dn.xlarge"]
    assert first["ProductDescription.1"] == ["Linux/UNIX"]
    sent = datetime.fromisoformat(first["StartTime"][0].replace("Z", "+00:00"))
    assert (NOW - sent).total_seconds() == 3600
    assert "NextToken" not in first and second["NextToken"] == ["spot-p2"]
    assert second["StartTime"] == first["StartTime"]


async def test_aws_leaves_out_what_the_api_does_not_list(serve: Serve) -> None:
    base = await serve(pricing_app([]))
    got = await aws_source(base).fetch([PriceKey("aws", "us-east-1", "g9.xlarge", "on_demand")])
    assert got == []


async def test_aws_server_error_is_a_price_source_error(serve: Serve) -> None:
    base = await serve(pricing_app([], status=500))
    with pytest.raises(PriceSourceError, match="GetProducts"):
        await aws_source(base).fetch([PriceKey("aws", "us-east-1", "g4dn.xlarge", "on_demand")])


# --- Azure Retail Prices ----------------------------------------------------------------------


def azure_row(**fields: Any) -> dict[str, Any]:
    row = {
        "currencyCode": "USD",
        "retailPrice": 0.0,
        "unitPrice": 0.0,
        "armRegionName": "eastus",
        "effectiveStartDate": "2026-10-01T00:00:00Z",
        "meterName": "NC4as T4 v3",
        "productName": "Virtual Machines NCasT4 v3 Series",
        "skuName": "NC4as T4 v3",
        "serviceName": "Virtual Machines",
        "unitOfMeasure": "1 Hour",
        "type": "Consumption",
        "armSkuName": "Standard_NC4as_T4_v3",
    }
    return {**row, **fields}


def azure_app(seen: list[dict[str, str]], hang: bool = False) -> web.Application:
    """Page 1: spot, low-priority and Windows rows; page 2 (via NextPageLink): the Linux
    pay-as-you-go row and a Windows spot row."""
    win = "Virtual Machines NCasT4 v3 Series Windows"
    pages = [
        [
            azure_row(retailPrice=0.1520, meterName="NC4as T4 v3 Spot", skuName="NC4as T4 v3 Spot"),
            azure_row(  # dearer than pay-as-you-go: a trap for the dearest-wins rule
                retailPrice=0.9052,
                meterName="NC4as T4 v3 Low Priority",
                skuName="NC4as T4 v3 Low Priority",
            ),
            azure_row(retailPrice=0.7100, productName=win),
        ],
        [
            azure_row(retailPrice=0.5310),
            azure_row(retailPrice=0.3000, productName=win, skuName="NC4as T4 v3 Spot"),
        ],
    ]

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        if hang:
            await asyncio.sleep(5)
        skip = int(request.query.get("$skip", "0"))
        page = 0 if skip == 0 else 1
        nxt = None
        if page == 0:
            nxt = str(request.url.with_query({"$filter": request.query["$filter"], "$skip": "3"}))
        reply = {"BillingCurrency": "USD", "Items": pages[page], "NextPageLink": nxt, "Count": 3}
        return web.json_response(reply)

    app = web.Application()
    app.router.add_get("/api/retail/prices", handle)
    return app


async def test_azure_pages_and_sorts_spot_low_priority_and_windows_rows(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    seen: list[dict[str, str]] = []
    base = await serve(azure_app(seen))
    od = PriceKey("azure", "eastus", "Standard_NC4as_T4_v3", "on_demand")
    spot = PriceKey("azure", "eastus", "Standard_NC4as_T4_v3", "spot")

    got = await AzurePriceSource(http, base_url=f"{base}/api/retail/prices").fetch([od, spot])

    assert {p.key: p.usd_per_hour for p in got} == {od: 0.531, spot: 0.152}
    assert all(p.as_of == "2026-10-01T00:00:00Z" and p.live for p in got)
    assert seen[0]["$filter"] == (
        "serviceName eq 'Virtual Machines' and armRegionName eq 'eastus' "
        "and armSkuName eq 'Standard_NC4as_T4_v3' and priceType eq 'Consumption'"
    )
    assert "$skip" not in seen[0] and seen[1]["$skip"] == "3"
    assert len(seen) == 2  # one query for both pricing models, two pages


# --- GCP Cloud Billing Catalog ------------------------------------------------------------------

GIB = 2**30
_UNITS = {"s": ("s", 1), "h": ("s", 3600), "GiBy.s": ("By.s", GIB), "GiBy.h": ("By.s", 3600 * GIB)}


def gcp_sku(n: int, description: str, group: str, usd: list[float], unit: str) -> dict[str, Any]:
    """A catalog SKU as the REST API sends it (camelCase; int64 ``units`` as a string).

    Usage type and region follow the catalog's naming: ``Spot Preemptible`` SKUs are Preemptible,
    ``Commitment`` ones Commit1Yr; Cloud Run names its region (``... in us-central1``), Compute
    Engine its continent (``running in Americas``: here us-central1).
    """
    base_unit, factor = _UNITS[unit]
    usage = "Preemptible" if "Spot Preemptible" in description else "OnDemand"
    usage = "Commit1Yr" if description.startswith("Commitment") else usage
    region = description.rsplit(" in ", 1)[-1]
    rates = [
        {
            "startUsageAmount": i * 1000,
            "unitPrice": {"currencyCode": "USD", "units": str(int(u)), "nanos": round(u % 1 * 1e9)},
        }
        for i, u in enumerate(usd)
    ]
    expression = {
        "usageUnit": unit,
        "baseUnit": base_unit,
        "baseUnitConversionFactor": factor,
        "tieredRates": rates,
    }
    return {
        "name": f"services/x/skus/{n}",
        "description": description,
        "category": {"resourceGroup": group, "usageType": usage, "resourceFamily": "Compute"},
        "serviceRegions": ["us-central1" if region == "Americas" else region],
        "pricingInfo": [{"effectiveTime": "2026-11-20T00:00:00Z", "pricingExpression": expression}],
    }


# (description, resource group, USD per usage unit by tier, usage unit). The traps cost more than
# the right SKU, so the dearest-wins rule would pick any that slipped through the matching.
CLOUD_RUN_PAGES = [
    [
        ("Services Nvidia L4 GPU no zonal redundancy in us-central1", "GPU", [0.0001867], "s"),
        ("Services Nvidia L4 GPU no zonal redundancy in europe-west1", "GPU", [0.0009], "s"),
        # a free allowance first: the first *paid* tier is the price
        ("Services CPU (Instance-based billing) in us-central1", "CPU", [0.0, 0.000018], "s"),
        ("Services CPU (Request-based billing) in us-central1", "CPU", [0.000024], "s"),
    ],
    [
        ("Services Nvidia L4 GPU with zonal redundancy in us-central1", "GPU", [0.0002909], "s"),
        ("Services Memory (Instance-based billing) in us-central1", "RAM", [0.000002], "GiBy.s"),
    ],
]
COMPUTE_PAGES = [
    [
        ("G2 Instance Core running in Americas", "CPU", [0.024445], "h"),
        ("G2 Instance Ram running in Americas", "RAM", [0.002864], "GiBy.h"),
        ("Nvidia L4 GPU running in Americas", "GPU", [0.56004], "h"),
        ("Reserved G2 Instance Core running in Americas", "CPU", [0.03], "h"),
        ("Commitment v1: G2 Instance Core in Americas", "CPU", [0.05], "h"),
    ],
    [
        ("Spot Preemptible G2 Instance Core running in Americas", "CPU", [0.0097], "h"),
        ("Spot Preemptible G2 Instance Ram running in Americas", "RAM", [0.0012], "GiBy.h"),
        (
            "Nvidia L4 GPU attached to Spot Preemptible VMs running in Americas",
            "GPU",
            [0.2231],
            "h",
        ),
    ],
]


def billing_app(seen: list[dict[str, str]], status: int = 200) -> web.Application:
    tables = {CLOUD_RUN_SERVICE: CLOUD_RUN_PAGES, COMPUTE_SERVICE: COMPUTE_PAGES}
    pages = {
        service: [[gcp_sku(n, *row) for n, row in enumerate(page)] for page in table]
        for service, table in tables.items()
    }

    async def handle(request: web.Request) -> web.Response:
        service = f"services/{request.match_info['service']}"
        seen.append({"service": service, **request.query})
        if status != 200:
            return web.json_response({"error": {"code": status, "message": "boom"}}, status=status)
        token = request.query.get("pageToken", "")
        page = 1 if token == "page-2" else 0
        reply: dict[str, Any] = {"skus": pages[service][page]}
        if page == 0:
            reply["nextPageToken"] = "page-2"
        return web.json_response(reply)

    app = web.Application()
    app.router.add_get("/v1/services/{service}/skus", handle)
    return app


def gcp_source(base: str) -> GcpPriceSource:
    return GcpPriceSource(credentials=AnonymousCredentials(), api_endpoint=base)


async def test_gcp_cloud_run_configs_add_gpu_cpu_and_memory(serve: Serve) -> None:
    seen: list[dict[str, str]] = []
    base = await serve(billing_app(seen))
    run = PriceKey("gcp", "us-central1", "run-l4", "serverless")
    zonal = PriceKey("gcp", "us-central1", "run-l4-zonal", "serverless")

    got = {p.key: p for p in await gcp_source(base).fetch([run, zonal])}

    cpu_mem = 4 * 0.000018 * 3600 + 16 * 0.000002 * 3600
    assert got[run].usd_per_hour == pytest.approx(0.0001867 * 3600 + cpu_mem)  # 1.04652
    assert got[zonal].usd_per_hour == pytest.approx(0.0002909 * 3600 + cpu_mem)  # 1.42164
    assert "Request-based" not in got[run].note and "europe-west1" not in got[run].note
    assert (got[run].gpu, got[run].gpu_count, got[run].as_of[:10]) == ("L4", 1, "2026-11-20")
    # one listing, two pages, the second asked for by its token; the $alt suffix is ignored
    assert [s["service"] for s in seen] == [CLOUD_RUN_SERVICE] * 2
    assert (seen[0]["currencyCode"], seen[0]["pageSize"]) == ("USD", "5000")
    assert seen[0]["$alt"] == "json;enum-encoding=int" and "pageToken" not in seen[0]
    assert seen[1]["pageToken"] == "page-2"


async def test_gcp_g2_on_demand_and_spot_from_compute_engine_parts(serve: Serve) -> None:
    seen: list[dict[str, str]] = []
    base = await serve(billing_app(seen))
    od = PriceKey("gcp", "us-central1", "g2-standard-4", "on_demand")
    spot = PriceKey("gcp", "us-central1", "g2-standard-4", "spot")
    elsewhere = PriceKey("gcp", "europe-west4", "g2-standard-4", "on_demand")

    got = {p.key: p.usd_per_hour for p in await gcp_source(base).fetch([od, spot, elsewhere])}

    assert got == {
        od: pytest.approx(4 * 0.024445 + 16 * 0.002864 + 0.56004),
        spot: pytest.approx(4 * 0.0097 + 16 * 0.0012 + 0.2231),
    }  # europe-west4 is in no SKU's service_regions: left out, not guessed
    assert {s["service"] for s in seen} == {COMPUTE_SERVICE}


# --- PriceCache over real sources -----------------------------------------------------------


async def test_cache_prices_live_from_all_three_clouds(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    aws_base = await serve(pricing_app([]))
    azure_base = await serve(azure_app([]))
    gcp_base = await serve(billing_app([]))
    cache = PriceCache(
        {
            "aws": aws_source(aws_base),
            "azure": AzurePriceSource(http, base_url=f"{azure_base}/api/retail/prices"),
            "gcp": gcp_source(gcp_base),
        },
        load_snapshot(),
        clock=lambda: 1_000.0,
    )
    keys = [
        PriceKey("aws", "us-east-1", "g4dn.xlarge", "on_demand"),
        PriceKey("azure", "eastus", "Standard_NC4as_T4_v3", "spot"),
        PriceKey("gcp", "us-central1", "run-l4", "serverless"),
    ]

    book = await cache.book(keys)

    assert all(book.price(k).live and book.price(k).fetched_at == 1_000.0 for k in keys)
    assert book.stale(TODAY) == []
    # the Azure API names no GPU: filled from the snapshot's row for the same SKU
    assert (book.price(keys[1]).gpu, book.price(keys[1]).gpu_count) == ("T4", 1)


async def test_cache_falls_back_to_the_snapshot_on_500_and_timeout(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    aws_base = await serve(pricing_app([], status=500))
    azure_seen: list[dict[str, str]] = []
    azure_base = await serve(azure_app(azure_seen, hang=True))
    gcp_base = await serve(billing_app([], status=500))
    cache = PriceCache(
        {
            "aws": aws_source(aws_base),
            "azure": AzurePriceSource(http, base_url=f"{azure_base}/api/retail/prices"),
            "gcp": gcp_source(gcp_base),
        },
        load_snapshot(),
        # long enough for boto3 to load its service model on a busy 2-core machine (the 500 must
        # be what fails AWS), short enough for the hanging Azure server to time out
        timeout_s=3.0,
        clock=lambda: 1_000.0,
    )
    aws = PriceKey("aws", "us-east-1", "g4dn.xlarge", "on_demand")
    azure = PriceKey("azure", "eastus", "Standard_NC4as_T4_v3", "on_demand")
    gcp = PriceKey("gcp", "us-central1", "run-l4", "serverless")

    book = await cache.book([aws, azure, gcp])

    snapshot = load_snapshot()
    assert all(book.price(k) == snapshot.price(k) for k in (aws, azure, gcp))
    stale = {f.key: f for f in book.stale(TODAY)}
    assert set(stale) == {aws, azure, gcp}
    assert (stale[aws].as_of, stale[aws].age_days) == ("2026-09-06", 80)
    assert "500" in stale[aws].reason or "Internal" in stale[aws].reason
    assert "timed out" in stale[azure].reason and len(azure_seen) == 1
    assert (stale[gcp].as_of, stale[gcp].age_days) == ("2026-08", 116)
