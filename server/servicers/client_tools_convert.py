"""Client tools protobuf ↔ domain conversion: declarations on a run request, pending calls,
and the results SubmitToolResults brings; protobuf types stop here."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import json_format

from loomwork.agents.run_models import PendingToolCall
from loomwork.errors import Violations
from loomwork.tools.client_tools import ClientTool, ClientToolResult, check_client_tools
from protos.loomwork.v1 import agent_pb2
from server.servicers.well_known_convert import set_timestamp, struct_to_dict

MAX_RESULT_BYTES = 256 * 1024
MAX_RESULTS_BYTES = 1024 * 1024


def client_tools_from_proto(
    tools: Iterable[agent_pb2.ClientTool], field: str = "client_tools"
) -> list[ClientTool]:
    """The declared client tools, checked together (INVALID_ARGUMENT naming the field; each
    field's own limits are the proto's); whether a name clashes with one of the agent's
    tools is the starter's to check."""
    declared = [
        ClientTool(
            name=tool.name,
            description=tool.description,
            parameters_schema=struct_to_dict(tool.parameters_schema),
            timeout=tool.timeout.ToTimedelta() if tool.HasField("timeout") else None,
        )
        for tool in tools
    ]
    check_client_tools(declared, field=field)
    return declared


def pending_tool_call_to_proto(call: PendingToolCall) -> agent_pb2.PendingToolCall:
    out = agent_pb2.PendingToolCall(
        tool_call_id=call.tool_call_id,
        tool_name=call.tool_name,
        step=call.step,
        run_path=call.run_path,
    )
    out.arguments.update(call.arguments)
    set_timestamp(out.request_time, call.request_time)
    if call.expire_time is not None:
        set_timestamp(out.expire_time, call.expire_time)
    return out


def tool_results_from_proto(
    results: Iterable[agent_pb2.ClientToolResult],
) -> list[ClientToolResult]:
    """SubmitToolResults' results, checked beyond each field's limits (the proto's): each
    with exactly one of a result and an error, within size limits, no call answered twice."""
    out: list[ClientToolResult] = []
    violations = Violations()
    seen: set[str] = set()
    total = 0
    for i, result in enumerate(results):
        at = f"results[{i}]"
        call_id = result.tool_call_id
        if call_id in seen:
            violations.add(f"{at}.tool_call_id", f"{call_id!r} is answered twice")
        seen.add(call_id)
        kind = result.WhichOneof("outcome")
        size = result.ByteSize()
        total += size
        if kind is None:
            violations.add(at, "set result or error")
        elif kind == "result" and size > MAX_RESULT_BYTES:
            violations.add(f"{at}.result", f"must be at most {MAX_RESULT_BYTES // 1024} KiB")
        if kind is not None:
            out.append(
                ClientToolResult(
                    tool_call_id=call_id,
                    result=json_format.MessageToDict(result.result) if kind == "result" else None,
                    error=result.error if kind == "error" else None,
                )
            )
    if total > MAX_RESULTS_BYTES:
        violations.add("results", f"must be at most {MAX_RESULTS_BYTES // 1024} KiB together")
    violations.raise_if_any()
    return out
