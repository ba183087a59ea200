"""Protobuf ↔ domain conversion for IntegrationService; secrets and tokens never go out."""

from __future__ import annotations

from loomwork.errors import InvalidArgument
from loomwork.integrations.connections import Connection
from loomwork.integrations.deliveries import WebhookDelivery
from loomwork.integrations.mcp_servers import McpServer, NewMcpServer
from loomwork.integrations.providers import NewOAuthProvider, OAuthProvider
from loomwork.integrations.routing import (
    IngestDocumentRule,
    ResumeAgentApprovalRule,
    ResumeWorkflowStepRule,
    Route,
    RuleAction,
    StartWorkflowRule,
)
from loomwork.integrations.sources import NewWebhookSource, WebhookSource
from loomwork.tools.mcp_names import McpToolRef
from protos.loomwork.v1 import integration_pb2 as pb
from server.servicers.well_known_convert import dict_to_struct, set_timestamp

_DELIVERY_STATUS = {
    "received": pb.WEBHOOK_DELIVERY_STATUS_RECEIVED,
    "routed": pb.WEBHOOK_DELIVERY_STATUS_ROUTED,
    "unrouted": pb.WEBHOOK_DELIVERY_STATUS_UNROUTED,
    "failed": pb.WEBHOOK_DELIVERY_STATUS_FAILED,
}
_CONNECTION_STATUS = {
    "active": pb.CONNECTION_STATUS_ACTIVE,
    "needs_reauthorization": pb.CONNECTION_STATUS_NEEDS_REAUTHORIZATION,
}
_MCP_SOURCE = {
    "tenant": pb.MCP_SERVER_SOURCE_TENANT,
    "operator": pb.MCP_SERVER_SOURCE_OPERATOR,
}
_SCHEMES = (
    pb.WEBHOOK_SIGNATURE_SCHEME_UNSPECIFIED,
    pb.WEBHOOK_SIGNATURE_SCHEME_HMAC_SHA256_TIMESTAMPED,
)


def _or(value: str, default: str) -> str:
    return value or default


def _rule_from_proto(route: pb.WebhookRoute, field: str) -> RuleAction:
    kind = route.WhichOneof("action")
    if kind == "resume_agent_approval":
        a = route.resume_agent_approval
        return ResumeAgentApprovalRule(
            run_id_path=_or(a.run_id_path, "data.run_id"),
            decisions_path=_or(a.decisions_path, "data.decisions"),
        )
    if kind == "resume_workflow_step":
        w = route.resume_workflow_step
        return ResumeWorkflowStepRule(
            run_id_path=_or(w.run_id_path, "data.run_id"),
            step_id_path=_or(w.step_id_path, "data.step_id"),
            resume_data_path=_or(w.resume_data_path, "data.resume_data"),
        )
    if kind == "start_workflow":
        s = route.start_workflow
        return StartWorkflowRule(
            workflow_name=s.workflow_name, input_path=_or(s.input_path, "data")
        )
    if kind == "ingest_document":
        d = route.ingest_document
        return IngestDocumentRule(
            collection_id=d.collection_id,
            text_path=_or(d.text_path, "data.text"),
            document_id_path=_or(d.document_id_path, "data.id"),
        )
    raise InvalidArgument.field(f"{field}.action", "give one action")


def new_source_from_proto(source: pb.WebhookSource) -> NewWebhookSource:
    if source.signature_scheme not in _SCHEMES:
        raise InvalidArgument.field("webhook_source.signature_scheme", "unknown scheme")
    tolerance = 0
    if source.HasField("timestamp_tolerance"):
        d = source.timestamp_tolerance
        if d.seconds < 1 or d.nanos:
            raise InvalidArgument.field(
                "webhook_source.timestamp_tolerance", "must be whole seconds between 1s and 1h"
            )
        tolerance = d.seconds
    routes = [
        Route(
            name=r.name,
            event_type=r.event_type,
            action=_rule_from_proto(r, f"webhook_source.routes[{i}]"),
        )
        for i, r in enumerate(source.routes)
    ]
    return NewWebhookSource(
        display_name=source.display_name,
        secret=source.secret,
        signature_header=source.signature_header,
        delivery_id_header=source.delivery_id_header,
        event_type_header=source.event_type_header,
        tolerance_seconds=tolerance,
        routes=routes,
    )


def _route_to_proto(route: Route) -> pb.WebhookRoute:
    out = pb.WebhookRoute(name=route.name, event_type=route.event_type)
    a = route.action
    if isinstance(a, ResumeAgentApprovalRule):
        out.resume_agent_approval.CopyFrom(
            pb.ResumeAgentApprovalAction(run_id_path=a.run_id_path, decisions_path=a.decisions_path)
        )
    elif isinstance(a, ResumeWorkflowStepRule):
        out.resume_workflow_step.CopyFrom(
            pb.ResumeWorkflowStepAction(
                run_id_path=a.run_id_path,
                step_id_path=a.step_id_path,
                resume_data_path=a.resume_data_path,
            )
        )
    elif isinstance(a, StartWorkflowRule):
        out.start_workflow.CopyFrom(
            pb.StartWorkflowAction(workflow_name=a.workflow_name, input_path=a.input_path)
        )
    else:
        out.ingest_document.CopyFrom(
            pb.IngestDocumentAction(
                collection_id=a.collection_id,
                text_path=a.text_path,
                document_id_path=a.document_id_path,
            )
        )
    return out


def source_to_proto(source: WebhookSource) -> pb.WebhookSource:
    out = pb.WebhookSource(
        id=source.id,
        display_name=source.display_name,
        signature_scheme=pb.WEBHOOK_SIGNATURE_SCHEME_HMAC_SHA256_TIMESTAMPED,
        signature_header=source.signature_header,
        delivery_id_header=source.delivery_id_header,
        event_type_header=source.event_type_header,
        routes=[_route_to_proto(r) for r in source.routes],
        path=source.path,
    )
    out.timestamp_tolerance.seconds = source.tolerance_seconds
    set_timestamp(out.create_time, source.create_time)
    return out


def delivery_to_proto(delivery: WebhookDelivery) -> pb.WebhookDelivery:
    out = pb.WebhookDelivery(
        id=delivery.id,
        webhook_source_id=delivery.source_id,
        event_type=delivery.event_type,
        status=_DELIVERY_STATUS[delivery.status],
        route_name=delivery.route_name,
        result=delivery.result,
        temporal_workflow_id=delivery.workflow_id,
        payload=dict_to_struct(delivery.payload),
    )
    set_timestamp(out.receive_time, delivery.receive_time)
    if delivery.route_time is not None:
        set_timestamp(out.route_time, delivery.route_time)
    return out


def new_provider_from_proto(provider: pb.OAuthProvider) -> NewOAuthProvider:
    return NewOAuthProvider(
        id=provider.id,
        authorize_url=provider.authorize_url,
        token_url=provider.token_url,
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        scopes=list(provider.scopes),
    )


def provider_to_proto(provider: OAuthProvider, redirect_uri: str) -> pb.OAuthProvider:
    out = pb.OAuthProvider(
        id=provider.id,
        authorize_url=provider.authorize_url,
        token_url=provider.token_url,
        client_id=provider.client_id,
        scopes=provider.scopes,
        redirect_uri=redirect_uri,
    )
    set_timestamp(out.create_time, provider.create_time)
    return out


def connection_to_proto(connection: Connection) -> pb.Connection:
    out = pb.Connection(
        id=connection.id,
        oauth_provider_id=connection.provider_id,
        status=_CONNECTION_STATUS[connection.status],
        scopes=connection.scopes,
        label=connection.label,
    )
    if connection.access_token_expire_time is not None:
        set_timestamp(out.access_token_expire_time, connection.access_token_expire_time)
    set_timestamp(out.create_time, connection.create_time)
    set_timestamp(out.update_time, connection.update_time)
    return out


def new_mcp_server_from_proto(server: pb.McpServer) -> NewMcpServer:
    return NewMcpServer(
        name=server.name,
        url=server.url,
        headers=dict(server.headers),
        oauth_connection_id=server.oauth_connection_id,
    )


def mcp_server_to_proto(server: McpServer) -> pb.McpServer:
    """The server as the tenant sees it: never its headers."""
    out = pb.McpServer(
        name=server.name,
        url=server.url,
        oauth_connection_id=server.oauth_connection_id,
        source=_MCP_SOURCE[server.source],
    )
    for tool in server.tools:
        listed = out.tools.add(
            name=tool.name,
            description=tool.description,
            tool_name=McpToolRef(server=server.name, tool=tool.name).tool_name,
        )
        listed.input_schema.update(tool.input_schema)
    if server.list_time is not None:
        set_timestamp(out.list_time, server.list_time)
    if server.create_time is not None:
        set_timestamp(out.create_time, server.create_time)
    return out
