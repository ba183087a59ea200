"""Webhooks received over HTTP: the signature scheme, forged, stale, replayed and bad
requests refused, duplicates accepted once, and the endpoint served beside gRPC."""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest
from temporalio.service import RPCError, RPCStatusCode

from loomwork.integrations import signatures
from protos.loomwork.v1 import integration_pb2
from tests.webhook_support import SECRET, create_source, list_deliveries, signed, wait_routed


async def _workflow_exists(runtime, workflow_id: str) -> bool:
    try:
        await runtime.temporal.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def test_signature_scheme_round_trip_and_rejections() -> None:
    body = b'{"type":"x"}'
    header = signatures.sign(SECRET, body, 1_700_000_000)
    assert signatures.verify(header, SECRET, body, tolerance_seconds=300, now=1_700_000_100)
    # Rotation: any of several v1 values may match.
    rotated = f"{header.split(',')[0]},v1=deadbeef,{header.split(',')[1]}"
    assert signatures.verify(rotated, SECRET, body, tolerance_seconds=300, now=1_700_000_000)
    for bad, now in (
        (header, 1_700_000_301),  # stale
        (header.replace("t=1700000000", "t=1700000001"), 1_700_000_000),  # timestamp edited
        (signatures.sign("another-secret-value", body, 1_700_000_000), 1_700_000_000),
        ("v1=abc", 1_700_000_000),
        ("", 1_700_000_000),
    ):
        with pytest.raises(signatures.SignatureRejected):
            signatures.verify(bad, SECRET, body, tolerance_seconds=300, now=now)
    with pytest.raises(signatures.SignatureRejected):
        signatures.verify(header, SECRET, body + b" ", tolerance_seconds=300, now=1_700_000_000)


async def test_health(http) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200 and response.text == "ok"


async def test_forged_and_stale_webhooks_are_401_and_start_nothing(
    http, integrations, token, runtime
) -> None:
    source = await create_source(integrations, token)
    assert source.path == f"/webhooks/{source.id}" and not source.secret
    body = {"type": "invoice.paid", "data": {"n": 1}}
    cases = {
        "forged": signed(body, "d-forged", secret="not-the-right-secret"),
        "stale": signed(body, "d-stale", timestamp=int(time.time()) - 301),
        "future": signed(body, "d-future", timestamp=int(time.time()) + 301),
    }
    raw, headers = signed(body, "d-missing")
    del headers["Loomwork-Signature"]
    cases["missing"] = (raw, headers)
    raw, headers = signed(body, "d-tampered")
    cases["tampered"] = (raw.replace(b"1", b"2"), headers)
    for name, (raw, headers) in cases.items():
        response = await http.post(source.path, content=raw, headers=headers)
        assert response.status_code == 401, name
        assert "signature" in response.json()["error"], name
    assert await list_deliveries(integrations, token, source.id) == []
    for delivery in ("d-forged", "d-stale", "d-future", "d-missing", "d-tampered"):
        workflow_id = f"webhook/alpha/{source.id}/{delivery}"
        assert not await _workflow_exists(runtime, workflow_id)
    unknown = await http.post("/webhooks/whs_nope", content=raw, headers=headers)
    assert unknown.status_code == 404


async def test_replayed_delivery_is_409_and_routes_once(http, integrations, token, runtime) -> None:
    source = await create_source(integrations, token)
    raw, headers = signed({"type": "ping"}, "d-1")
    first = await http.post(source.path, content=raw, headers=headers)
    assert first.status_code == 202, first.text
    assert first.json()["workflow_id"] == f"webhook/alpha/{source.id}/d-1"
    replay = await http.post(source.path, content=raw, headers=headers)
    assert replay.status_code == 409
    # A fresh signature does not make an old delivery id new.
    raw, headers = signed({"type": "ping"}, "d-1")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 409
    delivery = await wait_routed(integrations, token, source.id, "d-1")
    assert delivery.status == integration_pb2.WEBHOOK_DELIVERY_STATUS_UNROUTED
    assert "no route" in delivery.result
    # With the Redis claim gone (expired), the stored delivery still refuses the replay.
    await runtime.redis.delete(f"loomwork:webhook-delivery:{source.id}/d-1")
    raw, headers = signed({"type": "ping"}, "d-1")
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 409
    assert [d.id for d in await list_deliveries(integrations, token, source.id)] == ["d-1"]
    # Routing heartbeats: a worker killed mid-route is noticed in seconds, not minutes.
    handle = runtime.temporal.get_workflow_handle(f"webhook/alpha/{source.id}/d-1")
    scheduled = [
        e.activity_task_scheduled_event_attributes
        async for e in handle.fetch_history_events()
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled and all(s.heartbeat_timeout.ToSeconds() == 10 for s in scheduled)


async def test_concurrent_duplicates_accept_exactly_one(http, integrations, token) -> None:
    source = await create_source(integrations, token)
    raw, headers = signed({"type": "ping", "data": {}}, "d-burst")
    responses = await asyncio.gather(
        *(http.post(source.path, content=raw, headers=headers) for _ in range(6))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 409, 409, 409, 409, 409]
    assert len(await list_deliveries(integrations, token, source.id)) == 1


async def test_bad_bodies_are_400(http, integrations, token) -> None:
    source = await create_source(integrations, token)
    raw = b"not json"
    headers = {"Loomwork-Signature": signatures.sign(SECRET, raw), "Loomwork-Delivery": "d-x"}
    assert (await http.post(source.path, content=raw, headers=headers)).status_code == 400
    raw, headers = signed({"type": "ping"}, "d-y")
    del headers["Loomwork-Delivery"]
    response = await http.post(source.path, content=raw, headers=headers)
    assert response.status_code == 400 and "Loomwork-Delivery" in response.json()["fields"]
    # The body's `id` stands in for the header.
    raw, headers = signed({"type": "ping", "id": "evt_1"}, "ignored")
    del headers["Loomwork-Delivery"]
    response = await http.post(source.path, content=raw, headers=headers)
    assert response.status_code == 202 and response.json()["delivery_id"] == "evt_1"


async def test_serve_runs_the_http_endpoint_beside_grpc(settings) -> None:
    from server.process import Running, serve

    stop = asyncio.Event()
    seen: dict[str, str | None] = {}

    async def ready(running: Running) -> None:
        seen["http"] = running.http_address
        async with httpx2.AsyncClient() as client:
            seen["health"] = (await client.get(f"http://{running.http_address}/healthz")).text
        stop.set()

    local = settings.model_copy(
        update={"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"}
    )
    await asyncio.wait_for(serve(local, worker=False, on_ready=ready, stop=stop), 60)
    assert seen["health"] == "ok" and seen["http"] and not seen["http"].endswith(":0")
