"""Settings, read once from the environment and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from loomwork.errors import FailedPrecondition

# `loomwork up` with no LOOMWORK_TOKENS: two tenants, so the demo can show their isolation.
DEFAULT_TOKENS = "dev=default,dev-other=other"
TASK_QUEUE = "loomwork"


class Settings(BaseSettings):
    """Every knob of a Loomwork process; unset service URLs mean 'embedded'."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    home: Path = Field(default=Path(".loomwork"), alias="LOOMWORK_HOME")
    grpc_address: str = Field(default="127.0.0.1:50051", alias="LOOMWORK_GRPC_ADDRESS")
    http_address: str = Field(default="127.0.0.1:8080", alias="LOOMWORK_HTTP_ADDRESS")
    # Base URL the outside world reaches the HTTP endpoint at (OAuth redirect URIs);
    # unset means http://<LOOMWORK_HTTP_ADDRESS>.
    public_url: str | None = Field(default=None, alias="LOOMWORK_PUBLIC_URL")
    # Encrypts webhook secrets and OAuth tokens at rest (a Fernet key or any passphrase of
    # 16+ characters). Unset: a development key kept in LOOMWORK_HOME/secret.key.
    secret_key: str | None = Field(default=None, alias="LOOMWORK_SECRET_KEY", repr=False)
    tokens: str | None = Field(default=None, alias="LOOMWORK_TOKENS")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    temporal_address: str | None = Field(default=None, alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE")
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
    # After this long with no worker taking a run it started, a Stream call says so (once).
    pending_notice_seconds: float = Field(
        default=10.0, gt=0, alias="LOOMWORK_PENDING_NOTICE_SECONDS"
    )
    # Begin a run's first model call while Temporal starts the run (loomwork.agents.speculation).
    speculative_first_step: bool = Field(default=True, alias="LOOMWORK_SPECULATIVE_FIRST_STEP")
    # How deep agents called as tools (`agent:<name>`) nest: a run a caller started is at depth
    # 0, the sub-agent runs it starts at 1...; a call that would go deeper gets an error result.
    max_agent_depth: int = Field(default=3, ge=0, le=16, alias="LOOMWORK_MAX_AGENT_DEPTH")
    embedding_model: str = Field(default="all-MiniLM-L6-v2", alias="LOOMWORK_EMBEDDING_MODEL")
    cache_enabled: bool = Field(default=True, alias="LOOMWORK_CACHE")
    max_message_bytes: int = Field(default=16 * 1024 * 1024, alias="LOOMWORK_MAX_MESSAGE_BYTES")

    @property
    def model_configured(self) -> bool:
        """Whether a model endpoint is set (OPENAI_API_KEY for OpenAI, or OPENAI_BASE_URL)."""
        return bool(self.openai_api_key or self.openai_base_url)

    def token_map(self) -> dict[str, str]:
        """`LOOMWORK_TOKENS` parsed as {token: tenant}."""
        return parse_tokens(self.tokens or "")


def parse_tokens(spec: str) -> dict[str, str]:
    """Parse `token=tenant,token2=tenant2`; a malformed pair is a clear error."""
    tokens: dict[str, str] = {}
    for pair in (p.strip() for p in spec.split(",")):
        if not pair:
            continue
        token, sep, tenant = pair.partition("=")
        if not sep or not token.strip() or not tenant.strip():
            raise FailedPrecondition(
                f"LOOMWORK_TOKENS: expected token=tenant pairs separated by commas, got {pair!r}"
            )
        tokens[token.strip()] = tenant.strip()
    return tokens
