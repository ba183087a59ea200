import datetime

from ...buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WebhookSignatureScheme(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEBHOOK_SIGNATURE_SCHEME_UNSPECIFIED: _ClassVar[WebhookSignatureScheme]
    WEBHOOK_SIGNATURE_SCHEME_HMAC_SHA256_TIMESTAMPED: _ClassVar[WebhookSignatureScheme]

class WebhookDeliveryStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEBHOOK_DELIVERY_STATUS_UNSPECIFIED: _ClassVar[WebhookDeliveryStatus]
    WEBHOOK_DELIVERY_STATUS_RECEIVED: _ClassVar[WebhookDeliveryStatus]
    WEBHOOK_DELIVERY_STATUS_ROUTED: _ClassVar[WebhookDeliveryStatus]
    WEBHOOK_DELIVERY_STATUS_UNROUTED: _ClassVar[WebhookDeliveryStatus]
    WEBHOOK_DELIVERY_STATUS_FAILED: _ClassVar[WebhookDeliveryStatus]

class ConnectionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_STATUS_UNSPECIFIED: _ClassVar[ConnectionStatus]
    CONNECTION_STATUS_ACTIVE: _ClassVar[ConnectionStatus]
    CONNECTION_STATUS_NEEDS_REAUTHORIZATION: _ClassVar[ConnectionStatus]

class McpServerSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MCP_SERVER_SOURCE_UNSPECIFIED: _ClassVar[McpServerSource]
    MCP_SERVER_SOURCE_TENANT: _ClassVar[McpServerSource]
    MCP_SERVER_SOURCE_OPERATOR: _ClassVar[McpServerSource]
WEBHOOK_SIGNATURE_SCHEME_UNSPECIFIED: WebhookSignatureScheme
WEBHOOK_SIGNATURE_SCHEME_HMAC_SHA256_TIMESTAMPED: WebhookSignatureScheme
WEBHOOK_DELIVERY_STATUS_UNSPECIFIED: WebhookDeliveryStatus
WEBHOOK_DELIVERY_STATUS_RECEIVED: WebhookDeliveryStatus
WEBHOOK_DELIVERY_STATUS_ROUTED: WebhookDeliveryStatus
WEBHOOK_DELIVERY_STATUS_UNROUTED: WebhookDeliveryStatus
WEBHOOK_DELIVERY_STATUS_FAILED: WebhookDeliveryStatus
CONNECTION_STATUS_UNSPECIFIED: ConnectionStatus
CONNECTION_STATUS_ACTIVE: ConnectionStatus
CONNECTION_STATUS_NEEDS_REAUTHORIZATION: ConnectionStatus
MCP_SERVER_SOURCE_UNSPECIFIED: McpServerSource
MCP_SERVER_SOURCE_TENANT: McpServerSource
MCP_SERVER_SOURCE_OPERATOR: McpServerSource

class WebhookSource(_message.Message):
    __slots__ = ("id", "display_name", "secret", "signature_scheme", "signature_header", "delivery_id_header", "event_type_header", "timestamp_tolerance", "routes", "path", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_SCHEME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_HEADER_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ID_HEADER_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_HEADER_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    display_name: str
    secret: str
    signature_scheme: WebhookSignatureScheme
    signature_header: str
    delivery_id_header: str
    event_type_header: str
    timestamp_tolerance: _duration_pb2.Duration
    routes: _containers.RepeatedCompositeFieldContainer[WebhookRoute]
    path: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., display_name: _Optional[str] = ..., secret: _Optional[str] = ..., signature_scheme: _Optional[_Union[WebhookSignatureScheme, str]] = ..., signature_header: _Optional[str] = ..., delivery_id_header: _Optional[str] = ..., event_type_header: _Optional[str] = ..., timestamp_tolerance: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., routes: _Optional[_Iterable[_Union[WebhookRoute, _Mapping]]] = ..., path: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WebhookRoute(_message.Message):
    __slots__ = ("name", "event_type", "resume_agent_approval", "resume_workflow_step", "start_workflow", "ingest_document")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESUME_AGENT_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    RESUME_WORKFLOW_STEP_FIELD_NUMBER: _ClassVar[int]
    START_WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    INGEST_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    event_type: str
    resume_agent_approval: ResumeAgentApprovalAction
    resume_workflow_step: ResumeWorkflowStepAction
    start_workflow: StartWorkflowAction
    ingest_document: IngestDocumentAction
    def __init__(self, name: _Optional[str] = ..., event_type: _Optional[str] = ..., resume_agent_approval: _Optional[_Union[ResumeAgentApprovalAction, _Mapping]] = ..., resume_workflow_step: _Optional[_Union[ResumeWorkflowStepAction, _Mapping]] = ..., start_workflow: _Optional[_Union[StartWorkflowAction, _Mapping]] = ..., ingest_document: _Optional[_Union[IngestDocumentAction, _Mapping]] = ...) -> None: ...

class ResumeAgentApprovalAction(_message.Message):
    __slots__ = ("run_id_path", "decisions_path")
    RUN_ID_PATH_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_PATH_FIELD_NUMBER: _ClassVar[int]
    run_id_path: str
    decisions_path: str
    def __init__(self, run_id_path: _Optional[str] = ..., decisions_path: _Optional[str] = ...) -> None: ...

class ResumeWorkflowStepAction(_message.Message):
    __slots__ = ("run_id_path", "step_id_path", "resume_data_path")
    RUN_ID_PATH_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_PATH_FIELD_NUMBER: _ClassVar[int]
    RESUME_DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    run_id_path: str
    step_id_path: str
    resume_data_path: str
    def __init__(self, run_id_path: _Optional[str] = ..., step_id_path: _Optional[str] = ..., resume_data_path: _Optional[str] = ...) -> None: ...

class StartWorkflowAction(_message.Message):
    __slots__ = ("workflow_name", "input_path")
    WORKFLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    workflow_name: str
    input_path: str
    def __init__(self, workflow_name: _Optional[str] = ..., input_path: _Optional[str] = ...) -> None: ...

class IngestDocumentAction(_message.Message):
    __slots__ = ("collection_id", "text_path", "document_id_path")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_PATH_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_PATH_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    text_path: str
    document_id_path: str
    def __init__(self, collection_id: _Optional[str] = ..., text_path: _Optional[str] = ..., document_id_path: _Optional[str] = ...) -> None: ...

class CreateWebhookSourceRequest(_message.Message):
    __slots__ = ("webhook_source",)
    WEBHOOK_SOURCE_FIELD_NUMBER: _ClassVar[int]
    webhook_source: WebhookSource
    def __init__(self, webhook_source: _Optional[_Union[WebhookSource, _Mapping]] = ...) -> None: ...

class CreateWebhookSourceResponse(_message.Message):
    __slots__ = ("webhook_source",)
    WEBHOOK_SOURCE_FIELD_NUMBER: _ClassVar[int]
    webhook_source: WebhookSource
    def __init__(self, webhook_source: _Optional[_Union[WebhookSource, _Mapping]] = ...) -> None: ...

class GetWebhookSourceRequest(_message.Message):
    __slots__ = ("webhook_source_id",)
    WEBHOOK_SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    webhook_source_id: str
    def __init__(self, webhook_source_id: _Optional[str] = ...) -> None: ...

class GetWebhookSourceResponse(_message.Message):
    __slots__ = ("webhook_source",)
    WEBHOOK_SOURCE_FIELD_NUMBER: _ClassVar[int]
    webhook_source: WebhookSource
    def __init__(self, webhook_source: _Optional[_Union[WebhookSource, _Mapping]] = ...) -> None: ...

class ListWebhookSourcesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWebhookSourcesResponse(_message.Message):
    __slots__ = ("webhook_sources", "next_page_token")
    WEBHOOK_SOURCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    webhook_sources: _containers.RepeatedCompositeFieldContainer[WebhookSource]
    next_page_token: str
    def __init__(self, webhook_sources: _Optional[_Iterable[_Union[WebhookSource, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteWebhookSourceRequest(_message.Message):
    __slots__ = ("webhook_source_id",)
    WEBHOOK_SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    webhook_source_id: str
    def __init__(self, webhook_source_id: _Optional[str] = ...) -> None: ...

class DeleteWebhookSourceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("id", "webhook_source_id", "event_type", "status", "route_name", "result", "temporal_workflow_id", "payload", "receive_time", "route_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    ROUTE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    webhook_source_id: str
    event_type: str
    status: WebhookDeliveryStatus
    route_name: str
    result: str
    temporal_workflow_id: str
    payload: _struct_pb2.Struct
    receive_time: _timestamp_pb2.Timestamp
    route_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., webhook_source_id: _Optional[str] = ..., event_type: _Optional[str] = ..., status: _Optional[_Union[WebhookDeliveryStatus, str]] = ..., route_name: _Optional[str] = ..., result: _Optional[str] = ..., temporal_workflow_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., receive_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., route_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListWebhookDeliveriesRequest(_message.Message):
    __slots__ = ("webhook_source_id", "page_size", "page_token")
    WEBHOOK_SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    webhook_source_id: str
    page_size: int
    page_token: str
    def __init__(self, webhook_source_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWebhookDeliveriesResponse(_message.Message):
    __slots__ = ("webhook_deliveries", "next_page_token")
    WEBHOOK_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    webhook_deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    next_page_token: str
    def __init__(self, webhook_deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetWebhookDeliveryRequest(_message.Message):
    __slots__ = ("webhook_source_id", "webhook_delivery_id")
    WEBHOOK_SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    webhook_source_id: str
    webhook_delivery_id: str
    def __init__(self, webhook_source_id: _Optional[str] = ..., webhook_delivery_id: _Optional[str] = ...) -> None: ...

class GetWebhookDeliveryResponse(_message.Message):
    __slots__ = ("webhook_delivery",)
    WEBHOOK_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    webhook_delivery: WebhookDelivery
    def __init__(self, webhook_delivery: _Optional[_Union[WebhookDelivery, _Mapping]] = ...) -> None: ...

class OAuthProvider(_message.Message):
    __slots__ = ("id", "authorize_url", "token_url", "client_id", "client_secret", "scopes", "redirect_uri", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZE_URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_URL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_URI_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    authorize_url: str
    token_url: str
    client_id: str
    client_secret: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    redirect_uri: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., authorize_url: _Optional[str] = ..., token_url: _Optional[str] = ..., client_id: _Optional[str] = ..., client_secret: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., redirect_uri: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateOAuthProviderRequest(_message.Message):
    __slots__ = ("oauth_provider",)
    OAUTH_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    oauth_provider: OAuthProvider
    def __init__(self, oauth_provider: _Optional[_Union[OAuthProvider, _Mapping]] = ...) -> None: ...

class CreateOAuthProviderResponse(_message.Message):
    __slots__ = ("oauth_provider",)
    OAUTH_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    oauth_provider: OAuthProvider
    def __init__(self, oauth_provider: _Optional[_Union[OAuthProvider, _Mapping]] = ...) -> None: ...

class ListOAuthProvidersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOAuthProvidersResponse(_message.Message):
    __slots__ = ("oauth_providers", "next_page_token")
    OAUTH_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    oauth_providers: _containers.RepeatedCompositeFieldContainer[OAuthProvider]
    next_page_token: str
    def __init__(self, oauth_providers: _Optional[_Iterable[_Union[OAuthProvider, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteOAuthProviderRequest(_message.Message):
    __slots__ = ("oauth_provider_id",)
    OAUTH_PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    oauth_provider_id: str
    def __init__(self, oauth_provider_id: _Optional[str] = ...) -> None: ...

class DeleteOAuthProviderResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartAuthorizationRequest(_message.Message):
    __slots__ = ("oauth_provider_id", "scopes", "label")
    OAUTH_PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    oauth_provider_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    label: str
    def __init__(self, oauth_provider_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., label: _Optional[str] = ...) -> None: ...

class StartAuthorizationResponse(_message.Message):
    __slots__ = ("authorization_url", "state", "connection_id")
    AUTHORIZATION_URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    authorization_url: str
    state: str
    connection_id: str
    def __init__(self, authorization_url: _Optional[str] = ..., state: _Optional[str] = ..., connection_id: _Optional[str] = ...) -> None: ...

class Connection(_message.Message):
    __slots__ = ("id", "oauth_provider_id", "status", "scopes", "label", "access_token_expire_time", "create_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    OAUTH_PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    oauth_provider_id: str
    status: ConnectionStatus
    scopes: _containers.RepeatedScalarFieldContainer[str]
    label: str
    access_token_expire_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., oauth_provider_id: _Optional[str] = ..., status: _Optional[_Union[ConnectionStatus, str]] = ..., scopes: _Optional[_Iterable[str]] = ..., label: _Optional[str] = ..., access_token_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListConnectionsRequest(_message.Message):
    __slots__ = ("oauth_provider_id", "page_size", "page_token")
    OAUTH_PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    oauth_provider_id: str
    page_size: int
    page_token: str
    def __init__(self, oauth_provider_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConnectionsResponse(_message.Message):
    __slots__ = ("connections", "next_page_token")
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    connections: _containers.RepeatedCompositeFieldContainer[Connection]
    next_page_token: str
    def __init__(self, connections: _Optional[_Iterable[_Union[Connection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetConnectionRequest(_message.Message):
    __slots__ = ("connection_id",)
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    def __init__(self, connection_id: _Optional[str] = ...) -> None: ...

class GetConnectionResponse(_message.Message):
    __slots__ = ("connection",)
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    connection: Connection
    def __init__(self, connection: _Optional[_Union[Connection, _Mapping]] = ...) -> None: ...

class DeleteConnectionRequest(_message.Message):
    __slots__ = ("connection_id",)
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    def __init__(self, connection_id: _Optional[str] = ...) -> None: ...

class DeleteConnectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class McpServer(_message.Message):
    __slots__ = ("name", "url", "headers", "oauth_connection_id", "tools", "list_time", "create_time", "source")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    OAUTH_CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    LIST_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    headers: _containers.ScalarMap[str, str]
    oauth_connection_id: str
    tools: _containers.RepeatedCompositeFieldContainer[McpTool]
    list_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    source: McpServerSource
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., oauth_connection_id: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[McpTool, _Mapping]]] = ..., list_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[McpServerSource, str]] = ...) -> None: ...

class McpTool(_message.Message):
    __slots__ = ("name", "description", "input_schema", "tool_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    input_schema: _struct_pb2.Struct
    tool_name: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., input_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., tool_name: _Optional[str] = ...) -> None: ...

class CreateMcpServerRequest(_message.Message):
    __slots__ = ("mcp_server",)
    MCP_SERVER_FIELD_NUMBER: _ClassVar[int]
    mcp_server: McpServer
    def __init__(self, mcp_server: _Optional[_Union[McpServer, _Mapping]] = ...) -> None: ...

class CreateMcpServerResponse(_message.Message):
    __slots__ = ("mcp_server",)
    MCP_SERVER_FIELD_NUMBER: _ClassVar[int]
    mcp_server: McpServer
    def __init__(self, mcp_server: _Optional[_Union[McpServer, _Mapping]] = ...) -> None: ...

class GetMcpServerRequest(_message.Message):
    __slots__ = ("mcp_server_name",)
    MCP_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    mcp_server_name: str
    def __init__(self, mcp_server_name: _Optional[str] = ...) -> None: ...

class GetMcpServerResponse(_message.Message):
    __slots__ = ("mcp_server",)
    MCP_SERVER_FIELD_NUMBER: _ClassVar[int]
    mcp_server: McpServer
    def __init__(self, mcp_server: _Optional[_Union[McpServer, _Mapping]] = ...) -> None: ...

class ListMcpServersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMcpServersResponse(_message.Message):
    __slots__ = ("mcp_servers", "next_page_token")
    MCP_SERVERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    mcp_servers: _containers.RepeatedCompositeFieldContainer[McpServer]
    next_page_token: str
    def __init__(self, mcp_servers: _Optional[_Iterable[_Union[McpServer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteMcpServerRequest(_message.Message):
    __slots__ = ("mcp_server_name",)
    MCP_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    mcp_server_name: str
    def __init__(self, mcp_server_name: _Optional[str] = ...) -> None: ...

class DeleteMcpServerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RefreshMcpServerRequest(_message.Message):
    __slots__ = ("mcp_server_name",)
    MCP_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    mcp_server_name: str
    def __init__(self, mcp_server_name: _Optional[str] = ...) -> None: ...

class RefreshMcpServerResponse(_message.Message):
    __slots__ = ("mcp_server",)
    MCP_SERVER_FIELD_NUMBER: _ClassVar[int]
    mcp_server: McpServer
    def __init__(self, mcp_server: _Optional[_Union[McpServer, _Mapping]] = ...) -> None: ...
