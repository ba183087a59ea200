"""Webhook accept latency and throughput vs a bare ASGI handler returning 200.

Both apps run on uvicorn in this process, reached over loopback HTTP by aiohttp. The
Loomwork side is the real endpoint: signature check (HMAC-SHA256), replay pre-check in
Redis, the delivery row in Postgres, the WebhookDelivery workflow started on Temporal
(no worker polls it: acceptance is what is timed, routing happens later) and the Redis
claim. The bare side reads the body and answers 200. Latency: one request at a time;
deliveries/s: `--concurrency` requests in flight.

    .venv/bin/python bench/webhooks.py [--requests 400] [--concurrency 16]

Starts embedded Postgres, Valkey and Temporal in a temporary home unless DATABASE_URL,
REDIS_URL and TEMPORAL_ADDRESS are set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.integrations import signatures
from loomwork.integrations.components import Integrations
from loomwork.integrations.sources import NewWebhookSource
from loomwork.storage.database import Database
from loomwork.storage.migrations import apply_migrations
from server.embedded import EmbeddedStack
from server.http import HttpServer, TemporalRoutingStarter, build_asgi
from server.temporal import connect_temporal, register_search_attributes

SECRET = "bench-secret-0123456789"
BODY = json.dumps({"type": "invoice.paid", "data": {"id": "in_1", "amount": 4200}}).encode()


def bare_app() -> Starlette:
    async def accept(request: Request) -> Response:
        await request.body()
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/webhooks/{source_id}", accept, methods=["POST"])])


def _headers() -> dict[str, str]:
    return {
        "Loomwork-Signature": signatures.sign(SECRET, BODY),
        "Loomwork-Delivery": uuid.uuid4().hex,
        "Content-Type": "application/json",
    }


async def _post(client: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    async with client.post(url, data=BODY, headers=headers) as response:
        text = await response.text()
        assert response.status in (200, 202), text


async def latency(client: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        headers = _headers()
        start = time.perf_counter()
        await _post(client, url, headers)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def throughput(client: aiohttp.ClientSession, url: str, n: int, concurrency: int) -> float:
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            await _post(client, url, _headers())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def main(args: argparse.Namespace, urls: dict[str, str], home: Path) -> None:
    db = Database(urls["DATABASE_URL"], max_size=20)
    await db.open()
    await apply_migrations(db)
    redis = Redis.from_url(urls["REDIS_URL"])
    temporal = await connect_temporal(urls["TEMPORAL_ADDRESS"], "default")
    await register_search_attributes(temporal, "default")
    integrations = Integrations.build(
        db, redis, secret_key="bench-key-0123456789", home=home, public_url="http://x"
    )
    source = await integrations.sources.create("bench", NewWebhookSource(secret=SECRET))
    starter = TemporalRoutingStarter(temporal, f"bench-{uuid.uuid4().hex[:6]}")
    servers = {
        "loomwork": HttpServer(build_asgi(integrations, starter), "127.0.0.1:0"),
        "bare": HttpServer(bare_app(), "127.0.0.1:0"),
    }
    for server in servers.values():
        await server.start()
    connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
    results: dict[str, dict[str, float]] = {}
    try:
        async with aiohttp.ClientSession(connector=connector) as client:
            for name, server in servers.items():
                url = f"http://{server.address}{source.path}"
                await latency(client, url, 20)  # warm up
                ms = latency_ms = await latency(client, url, args.requests)
                rate = await throughput(client, url, args.requests, args.concurrency)
                results[name] = {
                    "p50": statistics.median(ms),
                    "p99": _pct(latency_ms, 99),
                    "rate": rate,
                }
    finally:
        for server in servers.values():
            await server.stop()
        await integrations.close()
        await redis.aclose()
        await db.close()
    lw, bare = results["loomwork"], results["bare"]
    print(f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'deliveries/s':>13}")
    for name, r in results.items():
        print(f"{name:10} {r['p50']:8.2f} {r['p99']:8.2f} {r['rate']:13.0f}")
    print(
        f"ratio      {lw['p50'] / bare['p50']:7.1f}x {lw['p99'] / bare['p99']:7.1f}x "
        f"{lw['rate'] / bare['rate']:12.2f}x"
    )


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        home = Path(tmp)
        names = ("DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS")
        stack = EmbeddedStack(
            home,
            postgres=not os.environ.get("DATABASE_URL"),
            redis=not os.environ.get("REDIS_URL"),
            temporal=not os.environ.get("TEMPORAL_ADDRESS"),
            temporal_ui=False,
        )
        endpoints = stack.start()
        try:
            found = {
                "DATABASE_URL": endpoints.database_url,
                "REDIS_URL": endpoints.redis_url,
                "TEMPORAL_ADDRESS": endpoints.temporal_address,
            }
            urls = {n: os.environ.get(n) or found[n] or "" for n in names}
            asyncio.run(main(args, urls, home))
        finally:
            stack.stop()


if __name__ == "__main__":
    run()
