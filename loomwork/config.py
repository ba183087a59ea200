"""Settings, read once from the environment and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.maint_notifications import MaintNotificationsConfig

from loomwork.errors import FailedPrecondition

# `loomwork up` with no LOOMWORK_TOKENS: two tenants, so the demo can show their isolation;
# both may configure agents and integrations (role admin).
DEFAULT_TOKENS = "dev=default:admin,dev-other=other:admin"
# The role that may create, update and delete agents, webhook sources, OAuth providers and
# MCP servers (protos/loomwork/v1/access.proto).
ADMIN_ROLE = "admin"
# Algorithms a JWT may be signed with: asymmetric only (a public key verifies, never signs).
JWT_ALGORITHMS = "RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,ES512,EdDSA"
TASK_QUEUE = "loomwork"


class Settings(BaseSettings):
    """Every knob of a Loomwork process; unset service URLs mean 'embedded'."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    home: Path = Field(default=Path(".loomwork"), alias="LOOMWORK_HOME")
    grpc_address: str = Field(default="127.0.0.1:50051", alias="LOOMWORK_GRPC_ADDRESS")
    http_address: str = Field(default="127.0.0.1:8080", alias="LOOMWORK_HTTP_ADDRESS")
    # TLS on the gRPC server and the HTTP endpoint (paths of PEM files: the certificate chain
    # and its key). With LOOMWORK_TLS_CLIENT_CA, gRPC callers must present a certificate
    # that CA signed (mTLS); the HTTP endpoint (webhooks, OAuth callbacks from browsers and
    # third parties) asks for none.
    tls_cert: Path | None = Field(default=None, alias="LOOMWORK_TLS_CERT")
    tls_key: Path | None = Field(default=None, alias="LOOMWORK_TLS_KEY")
    tls_client_ca: Path | None = Field(default=None, alias="LOOMWORK_TLS_CLIENT_CA")
    # Base URL the outside world reaches the HTTP endpoint at (OAuth redirect URIs);
    # unset means http://<LOOMWORK_HTTP_ADDRESS>.
    public_url: str | None = Field(default=None, alias="LOOMWORK_PUBLIC_URL")
    # Encrypts webhook secrets and OAuth tokens at rest (a Fernet key or any passphrase of
    # 16+ characters). Required by `loomwork server` and `loomwork worker`; `loomwork up`
    # without it makes a development key kept in LOOMWORK_HOME/secret.key.
    secret_key: str | None = Field(default=None, alias="LOOMWORK_SECRET_KEY", repr=False)
    # Static bearer tokens: `token=tenant[:role[:role...]]` pairs, comma-separated
    # (`dev=default:admin`). Kept for development; production uses JWTs (below).
    tokens: str | None = Field(default=None, alias="LOOMWORK_TOKENS")
    # JWT bearer tokens, verified against the keys at a JWKS URL (cached; fetched again on
    # an unknown `kid`, at most once per LOOMWORK_JWT_JWKS_MIN_REFRESH_SECONDS) or a public
    # key (PEM text, or the path of a PEM file). Either one turns JWTs on; issuer and
    # audience are then required and checked.
    jwt_jwks_url: str | None = Field(default=None, alias="LOOMWORK_JWT_JWKS_URL")
    jwt_public_key: str | None = Field(default=None, alias="LOOMWORK_JWT_PUBLIC_KEY", repr=False)
    jwt_issuer: str | None = Field(default=None, alias="LOOMWORK_JWT_ISSUER")
    jwt_audience: str | None = Field(default=None, alias="LOOMWORK_JWT_AUDIENCE")
    # The claim naming the caller's tenant, and the one listing its roles (a list of
    # strings, or one space-separated string); dots reach into objects (`realm.roles`).
    jwt_tenant_claim: str = Field(default="tenant", alias="LOOMWORK_JWT_TENANT_CLAIM")
    jwt_roles_claim: str = Field(default="roles", alias="LOOMWORK_JWT_ROLES_CLAIM")
    jwt_algorithms: str = Field(default=JWT_ALGORITHMS, alias="LOOMWORK_JWT_ALGORITHMS")
    # Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    jwt_leeway: float = Field(default=30.0, ge=0, alias="LOOMWORK_JWT_LEEWAY_SECONDS")
    # The JWKS is fetched again when older than this, or on an unknown `kid` once the last
    # fetch is older than the floor (a stream of bad tokens cannot hammer the key server).
    jwt_jwks_ttl: float = Field(default=600.0, gt=0, alias="LOOMWORK_JWT_JWKS_TTL_SECONDS")
    jwt_jwks_min_refresh: float = Field(
        default=30.0, ge=0, alias="LOOMWORK_JWT_JWKS_MIN_REFRESH_SECONDS"
    )
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    # The embedded PostgreSQL's server settings, `name=value` pairs separated by commas
    # (`shared_buffers=4GB,maintenance_work_mem=2GB`), over its memory settings sized to the
    # machine (server/embedded/postgres_settings.py). Unused with DATABASE_URL.
    postgres_settings: str = Field(default="", alias="LOOMWORK_POSTGRES_SETTINGS")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    # Redis connections of a process for the blocking reads of streams, apart from the pool
    # of short commands, which streams can then never exhaust. All the open Streams and
    # WatchRuns of a process share one reader (loomwork/streams/shared_reader.py), which holds
    # one of them at a time.
    redis_stream_connections: int = Field(
        default=2000, ge=1, alias="LOOMWORK_REDIS_STREAM_CONNECTIONS"
    )
    temporal_address: str | None = Field(default=None, alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE")
    # Temporal over TLS (Temporal Cloud, or a cluster with mTLS). Paths of PEM files: the
    # client certificate and key (mTLS), the CA that signed the server's certificate (unset:
    # the system's roots) and the name to verify it against. TEMPORAL_API_KEY is sent as a
    # bearer token (Temporal Cloud API keys). Any of these turns TLS on; TEMPORAL_TLS=true
    # turns it on alone (system roots), false forces it off.
    temporal_tls: bool | None = Field(default=None, alias="TEMPORAL_TLS")
    temporal_tls_cert: Path | None = Field(default=None, alias="TEMPORAL_TLS_CERT")
    temporal_tls_key: Path | None = Field(default=None, alias="TEMPORAL_TLS_KEY")
    temporal_tls_ca: Path | None = Field(default=None, alias="TEMPORAL_TLS_CA")
    temporal_tls_server_name: str | None = Field(default=None, alias="TEMPORAL_TLS_SERVER_NAME")
    temporal_api_key: str | None = Field(default=None, alias="TEMPORAL_API_KEY", repr=False)
    task_queue: str = Field(default=TASK_QUEUE, alias="LOOMWORK_TASK_QUEUE")
    # Comma-separated Python modules that register workflow definitions on import.
    workflow_modules: str = Field(default="", alias="LOOMWORK_WORKFLOW_MODULES")
    # Modules with the application's `@tool` functions and code-defined agents.
    tool_modules: str = Field(default="", alias="LOOMWORK_TOOL_MODULES")
    # The operator's MCP servers, stdio only, shared by every tenant: a JSON object
    # {"<name>": {"command": "...", "args": [...], "env": {...}, "cwd": "..."}}. Every server
    # and worker process starts the command when it needs the server's tools.
    mcp_servers: str = Field(default="", alias="LOOMWORK_MCP_SERVERS")
    # Seconds an MCP server's cached tool list serves runs before it is listed again.
    mcp_tools_ttl: float = Field(default=300.0, gt=0, alias="LOOMWORK_MCP_TOOLS_TTL")
    # How the worker sandboxes workflow code. "passthrough" loads Loomwork's own workflow
    # modules once and shares them (the sandbox still guards builtins such as `open`):
    # ~10 ms less per run start. "strict" re-imports them into every run's sandbox, so a
    # non-deterministic call in workflow code (datetime.now, random, os) fails the task.
    # The test suite runs strict.
    workflow_sandbox: Literal["passthrough", "strict"] = Field(
        default="passthrough", alias="LOOMWORK_WORKFLOW_SANDBOX"
    )
    # Demo mode (`loomwork up --demo`): demo tools (`send_email` sends nothing) and agent, the
    # example workflows and, with no model configured, the offline model. Set it alike on
    # every server and worker of one deployment.
    demo: bool = Field(default=False, alias="LOOMWORK_DEMO")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")
    chat_model: str = Field(default="gpt-4o-mini", alias="LOOMWORK_CHAT_MODEL")
    # Seconds a model request may wait on the model (to connect, or for its next bytes while
    # it streams); past it the call fails as a timeout and Temporal retries its step.
    model_timeout: float = Field(default=120.0, gt=0, alias="LOOMWORK_MODEL_TIMEOUT")
    # Model calls a process makes at once (agent steps, answers); more wait for a slot. 0: no
    # bound. Bounding them keeps a busy worker's loop free to accept calls (`loomwork up`).
    model_concurrency: int = Field(default=0, ge=0, alias="LOOMWORK_MODEL_CONCURRENCY")
    # How many times an agent's step calls one model before it falls back to the agent's next
    # model (`fallback_models`) or fails: 429s, 5xx and timeouts are retried with backoff
    # (1 s, 2 s, 4 s, ... up to 30 s). At most 10, the workflows' own limit.
    model_call_attempts: int = Field(default=10, ge=1, le=10, alias="LOOMWORK_MODEL_CALL_ATTEMPTS")
    # After this long with no worker taking a run it started, a Stream call says so (once).
    pending_notice_seconds: float = Field(
        default=10.0, gt=0, alias="LOOMWORK_PENDING_NOTICE_SECONDS"
    )
    # After this long with no event, a stream (Stream, WatchRun, Answer, WatchIngestion...)
    # sends a keep-alive saying whether the run's workflow is still open, and again after
    # each further quiet period: a watcher tells a dead stream from a slow model.
    stream_keepalive_seconds: float = Field(
        default=15.0, gt=0, alias="LOOMWORK_STREAM_KEEPALIVE_SECONDS"
    )
    # How often each server starts the indexing (semantic recall) of stored messages whose
    # start failed (Temporal unreachable as they were stored), kept until then in Postgres.
    index_sweep_seconds: float = Field(default=30.0, gt=0, alias="LOOMWORK_INDEX_SWEEP_SECONDS")
    # Begin a run's first model call while Temporal starts the run (loomwork.agents.speculation).
    speculative_first_step: bool = Field(default=True, alias="LOOMWORK_SPECULATIVE_FIRST_STEP")
    # How deep agents called as tools (`agent:<name>`) nest: a run a caller started is at depth
    # 0, the sub-agent runs it starts at 1...; a call that would go deeper gets an error result.
    max_agent_depth: int = Field(default=3, ge=0, le=16, alias="LOOMWORK_MAX_AGENT_DEPTH")
    # What models cost per million tokens, a JSON object or the path of a JSON file:
    # {"<model>": {"input": 0.15, "output": 0.6, "cached_input": 0.075}} (loomwork.usage.prices).
    model_prices: str = Field(default="", alias="LOOMWORK_MODEL_PRICES")
    # Per-tenant quotas checked as runs start, JSON: {"default": {"tokens_per_day": N,
    # "concurrent_runs": N}, "<tenant>": {...}} (loomwork.usage.quotas).
    quotas: str = Field(default="", alias="LOOMWORK_QUOTAS")
    embedding_model: str = Field(default="all-MiniLM-L6-v2", alias="LOOMWORK_EMBEDDING_MODEL")
    # An ingestion's activities in flight at once (documents and embedding batches alike),
    # spread over every worker polling the queue.
    ingest_parallelism: int = Field(default=4, ge=1, le=256, alias="LOOMWORK_INGEST_PARALLELISM")
    # An ingestion's run continues as new after starting this many activities (or sooner,
    # when Temporal suggests it), so its history stays small.
    ingest_continue_after: int = Field(
        default=1000, ge=1, le=10000, alias="LOOMWORK_INGEST_CONTINUE_AFTER"
    )
    cache_enabled: bool = Field(default=True, alias="LOOMWORK_CACHE")
    # Where threads, messages and working memory live (vectors stay in pgvector whatever
    # the store). A deployment keeps the store it started with (loomwork.storage.selection).
    memory_store: Literal["postgres", "redis", "dynamodb"] = Field(
        default="postgres", alias="LOOMWORK_MEMORY_STORE"
    )
    # The DynamoDB store's table (created at start if missing) and endpoint (unset: AWS's,
    # from the region); region and credentials come from the usual AWS variables.
    dynamodb_table: str = Field(default="loomwork", min_length=3, alias="LOOMWORK_DYNAMODB_TABLE")
    aws_endpoint_url: str | None = Field(default=None, alias="AWS_ENDPOINT_URL")
    # How stored values are written: JSON, zstd-compressed above the threshold (bytes of
    # JSON), or never compressed. Values written under either setting are read under both.
    storage_compression: Literal["zstd", "none"] = Field(
        default="zstd", alias="LOOMWORK_STORAGE_COMPRESSION"
    )
    storage_compression_threshold: int = Field(
        default=1024, ge=0, alias="LOOMWORK_STORAGE_COMPRESSION_THRESHOLD"
    )
    max_message_bytes: int = Field(default=16 * 1024 * 1024, alias="LOOMWORK_MAX_MESSAGE_BYTES")
    # /metrics labels run and tool metrics with the tenant only when asked (a label per
    # tenant multiplies the series a Prometheus server keeps).
    metrics_tenant_label: bool = Field(default=False, alias="LOOMWORK_METRICS_TENANT_LABEL")
    # Log lines: JSON (one object a line, with tenant, run id, workflow id and trace id),
    # the rich console, or "auto": JSON when stderr is not a terminal.
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", alias="LOOMWORK_LOG_FORMAT"
    )

    @property
    def model_configured(self) -> bool:
        """Whether a model endpoint is set (OPENAI_API_KEY for OpenAI, or OPENAI_BASE_URL)."""
        return bool(self.openai_api_key or self.openai_base_url)

    @field_validator(
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "temporal_tls",
        "temporal_tls_cert",
        "temporal_tls_key",
        "temporal_tls_ca",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`VAR=` (as env files and compose defaults write it) means unset, not the path `.`."""
        return None if value == "" else value

    @property
    def jwt_enabled(self) -> bool:
        """Whether JWT bearer tokens are accepted (a JWKS URL or a public key is set)."""
        return bool(self.jwt_jwks_url or self.jwt_public_key)

    def token_map(self) -> dict[str, TokenGrant]:
        """`LOOMWORK_TOKENS` parsed as {token: what it grants}."""
        return parse_tokens(self.tokens or "")


@dataclass(frozen=True)
class TokenGrant:
    """What a static token stands for: a tenant, and the caller's roles in it."""

    tenant: str
    roles: frozenset[str] = frozenset()


def redis_options() -> dict[str, Any]:
    """Options for every Redis client Loomwork builds (`Redis.from_url(url, **redis_options(),
    ...)`): no maintenance-notification handshake. redis-py 8 sends `CLIENT
    MAINT_NOTIFICATIONS` on each new connection, which Valkey and open-source Redis refuse:
    a round trip and an error reply per connection, for a feature of Redis Enterprise."""
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def parse_tokens(spec: str) -> dict[str, TokenGrant]:
    """Parse `token=tenant[:role...],token2=tenant2`; a malformed pair is a clear error."""
    tokens: dict[str, TokenGrant] = {}
    for pair in (p.strip() for p in spec.split(",")):
        if not pair:
            continue
        token, sep, grant = pair.partition("=")
        tenant, *roles = (part.strip() for part in grant.split(":"))
        if not sep or not token.strip() or not tenant or not all(roles):
            raise FailedPrecondition(
                "LOOMWORK_TOKENS: expected token=tenant or token=tenant:role pairs separated "
                f"by commas, got {pair!r}"
            )
        tokens[token.strip()] = TokenGrant(tenant, frozenset(roles))
    return tokens
