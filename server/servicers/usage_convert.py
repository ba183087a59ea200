"""Protobuf <-> domain conversion of usage.proto (usage reports, quotas); protobuf types
stop here."""

from __future__ import annotations

from loomwork.usage.quotas import QuotaStatus
from loomwork.usage.report import Dimension, UsageQuery, UsageRow
from protos.loomwork.v1 import usage_pb2
from server.servicers.well_known_convert import set_timestamp, timestamp_to_datetime

_DIMENSIONS: dict[int, Dimension] = {
    usage_pb2.USAGE_DIMENSION_DAY: "day",
    usage_pb2.USAGE_DIMENSION_AGENT: "agent",
    usage_pb2.USAGE_DIMENSION_MODEL: "model",
    usage_pb2.USAGE_DIMENSION_RUN: "run",
}
_RUN_KINDS = {
    "agent": usage_pb2.USAGE_RUN_KIND_AGENT,
    "answer": usage_pb2.USAGE_RUN_KIND_RAG_ANSWER,
}


def usage_query_from_proto(request: usage_pb2.ListUsageRequest) -> UsageQuery:
    """The query of a ListUsage request (its rules checked already by the interceptor)."""
    end = (
        timestamp_to_datetime(request.end_time, "end_time")
        if request.HasField("end_time")
        else None
    )
    return UsageQuery(
        start_time=timestamp_to_datetime(request.start_time, "start_time"),
        end_time=end,
        group_by=[_DIMENSIONS[d] for d in request.group_by if d in _DIMENSIONS],
        agent_name=request.agent_name,
        model=request.model,
        run_id=request.run_id,
        page_size=request.page_size,
        page_token=request.page_token,
    )


def usage_to_proto(row: UsageRow) -> usage_pb2.UsageSummary:
    out = usage_pb2.UsageSummary(
        day=row.day.isoformat() if row.day is not None else "",
        run_kind=_RUN_KINDS.get(row.run_kind, usage_pb2.USAGE_RUN_KIND_UNSPECIFIED),
        agent_name=row.agent_name,
        model=row.model,
        run_id=row.run_id,
        input_tokens=row.input_tokens,
        cached_input_tokens=row.cached_tokens,
        output_tokens=row.output_tokens,
        total_tokens=row.total_tokens,
        model_calls=row.model_calls,
        runs=row.runs,
        unpriced_models=row.unpriced_models,
    )
    if row.cost is not None:
        out.cost = row.cost
    return out


def quota_to_proto(status: QuotaStatus) -> usage_pb2.Quota:
    out = usage_pb2.Quota(
        tenant=status.tenant,
        tokens_per_day=status.quota.tokens_per_day or 0,
        tokens_used_today=status.tokens_used_today,
        concurrent_runs=status.quota.concurrent_runs or 0,
        runs_under_way=status.runs_under_way,
    )
    set_timestamp(out.tokens_reset_time, status.tokens_reset_time)
    return out
