"""UsageService: the tenant's model tokens and cost (the usage ledger, priced), and its
quotas."""

from __future__ import annotations

import grpc

from protos.loomwork.v1 import usage_pb2, usage_pb2_grpc
from server.quotas import quota_status
from server.runtime import Runtime
from server.servicers import usage_convert
from server.servicers.tenancy import tenant


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.reports = runtime.usage.reports

    async def ListUsage(
        self, request: usage_pb2.ListUsageRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ListUsageResponse:
        page = await self.reports.report(tenant(), usage_convert.usage_query_from_proto(request))
        return usage_pb2.ListUsageResponse(
            usage=[usage_convert.usage_to_proto(row) for row in page.rows],
            total=usage_convert.usage_to_proto(page.total),
            next_page_token=page.next_page_token,
        )

    async def GetQuota(
        self, request: usage_pb2.GetQuotaRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.GetQuotaResponse:
        status = await quota_status(self.runtime, tenant())
        return usage_pb2.GetQuotaResponse(quota=usage_convert.quota_to_proto(status))
