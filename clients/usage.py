"""`client.usage`: model tokens and their cost, and the tenant's quotas (UsageService)."""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from clients.transport import Transport, iter_pages
from protos.loomwork.v1 import usage_pb2, usage_pb2_grpc

__all__ = ["DIMENSIONS", "UsageClient"]

# `group_by` names and the dimensions they stand for.
DIMENSIONS = {
    "day": usage_pb2.USAGE_DIMENSION_DAY,
    "agent": usage_pb2.USAGE_DIMENSION_AGENT,
    "model": usage_pb2.USAGE_DIMENSION_MODEL,
    "run": usage_pb2.USAGE_DIMENSION_RUN,
}


class UsageClient:
    """The tenant's model tokens and cost over a time range (grouped by day, agent, model
    and/or run), and its quotas.

        page = await client.usage.list_usage(start_time=since, group_by=["day", "model"])
        for row in page.usage:
            print(row.day, row.model, row.total_tokens, row.cost if row.HasField("cost") else "?")
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = usage_pb2_grpc.UsageServiceStub(transport.channel)

    async def list_usage(
        self,
        *,
        start_time: datetime,
        end_time: datetime | None = None,
        group_by: Sequence[str | usage_pb2.UsageDimension] = (),
        agent_name: str = "",
        model: str = "",
        run_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> usage_pb2.ListUsageResponse:
        """One page of usage groups from `start_time` to `end_time` (None: now); `group_by`
        names dimensions (`day`, `agent`, `model`, `run`; empty: day, agent and model).
        `response.total` covers the whole range. A `cost` that is unset is unknown: the
        price table lacks the `unpriced_models`."""
        dimensions = [DIMENSIONS[d] if isinstance(d, str) else d for d in group_by]
        request = usage_pb2.ListUsageRequest(
            group_by=dimensions,
            agent_name=agent_name,
            model=model,
            run_id=run_id,
            page_size=page_size,
            page_token=page_token,
        )
        request.start_time.FromDatetime(start_time)
        if end_time is not None:
            request.end_time.FromDatetime(end_time)
        return await self._transport.call(
            self._stub.ListUsage, request, usage_pb2.ListUsageResponse, timeout
        )

    async def iter_usage(
        self,
        *,
        start_time: datetime,
        end_time: datetime | None = None,
        group_by: Sequence[str | usage_pb2.UsageDimension] = (),
        agent_name: str = "",
        model: str = "",
        run_id: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[usage_pb2.UsageSummary]:
        """Every usage group of the range, page after page."""

        async def fetch(token: str) -> usage_pb2.ListUsageResponse:
            return await self.list_usage(
                start_time=start_time,
                end_time=end_time,
                group_by=group_by,
                agent_name=agent_name,
                model=model,
                run_id=run_id,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
            )

        async for page in iter_pages(fetch):
            for row in page.usage:
                yield row

    async def get_quota(self, *, timeout: float | None = None) -> usage_pb2.Quota:
        """The tenant's quotas and what it uses of them now."""
        response = await self._transport.call(
            self._stub.GetQuota, usage_pb2.GetQuotaRequest(), usage_pb2.GetQuotaResponse, timeout
        )
        return response.quota
