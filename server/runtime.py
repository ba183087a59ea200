"""The live dependencies of a Loomwork process: database, Redis, Temporal client, domain objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from redis.asyncio import BlockingConnectionPool, Redis
from temporalio.client import Client

from loomwork.agents.definitions import AgentRegistry
from loomwork.agents.first_step_routing import FirstStepWorkers
from loomwork.agents.memory_tool import working_memory_tool
from loomwork.agents.payloads import FirstStep
from loomwork.agents.speculation import SpeculativeSteps
from loomwork.agents.steps import AgentSteps
from loomwork.agents.tool_modules import load_tool_modules
from loomwork.cache.versioned import VersionedCache
from loomwork.config import Settings, redis_options
from loomwork.embeddings import embedding_provider, resolve_dimension
from loomwork.flows.registry import (
    WorkflowRegistry,
    default_registry,
    import_workflow_modules,
)
from loomwork.guardrails import ProcessorRegistry
from loomwork.integrations.components import Integrations
from loomwork.integrations.mcp_tools import parse_operator_servers
from loomwork.llm.shared import NO_MODEL_CONFIGURED, SharedChatModels
from loomwork.memory.recall import MessageRecall
from loomwork.memory.threads import Memory
from loomwork.memory.working import WorkingMemoryStore
from loomwork.rag.system import RagSystem
from loomwork.rag.tool import RAG_QUERY_TOOL, rag_query_tool
from loomwork.storage.adapter import MemoryStorage
from loomwork.storage.cached import CachedMemoryStorage
from loomwork.storage.database import Database
from loomwork.storage.event_ceilings import EventIdCeilings
from loomwork.storage.migrations import apply_migrations
from loomwork.storage.selection import OpenedStore, open_memory_store, storage_codec
from loomwork.streams.run_events import RunEventLog
from loomwork.tools import ToolRegistry
from loomwork.usage.system import UsageSystem
from server.telemetry.process import Telemetry
from server.temporal import connect_temporal
from server.tls import temporal_tls

if TYPE_CHECKING:
    from loomwork.demo.mode import DemoMode

log = logging.getLogger(__name__)

# The pool of a process's short Redis commands, and how long a command waits for one of its
# connections when all are busy (seconds) before it fails as unavailable.
REDIS_CONNECTIONS = 100
REDIS_CONNECTION_WAIT = 5.0


def rag_system(
    settings: Settings,
    db: Database,
    events: RunEventLog,
    chat_models: SharedChatModels,
    usage: UsageSystem,
) -> RagSystem:
    """RAG over the process's database, event log and chat models, as settings say; its
    answers' model calls go to the usage ledger."""
    return RagSystem.build(
        db,
        events,
        usage=usage.ledger,
        embedding_model=settings.embedding_model,
        chat_model=chat_models,
        default_chat_model=settings.chat_model,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
    )


@dataclass
class Runtime:
    settings: Settings
    db: Database
    redis: Redis
    temporal: Client
    memory: Memory
    recall: MessageRecall
    working_memory: WorkingMemoryStore
    events: RunEventLog
    agents: AgentRegistry
    tools: ToolRegistry
    chat_models: SharedChatModels
    usage: UsageSystem
    cache: VersionedCache | None = None
    # The memory store as opened (LOOMWORK_MEMORY_STORE): its connections close with us.
    store: OpenedStore | None = None
    integrations: Integrations | None = None
    flows: WorkflowRegistry = field(default_factory=lambda: default_registry)
    rag: RagSystem | None = None
    # A worker of this process polls the task queue through `temporal`: runs started here
    # go to it directly (eager start), so they are running from the start.
    runs_worker: bool = False
    # Its agent steps, when it runs a worker: runs started here begin their first step at
    # once, for the run's first activity (in this process) to adopt.
    agent_steps: AgentSteps | None = None
    speculation: SpeculativeSteps[FirstStep] = field(default_factory=SpeculativeSteps)
    # With no worker here: the workers that begin first steps for the runs started here.
    first_steps: FirstStepWorkers = field(init=False)
    # Demo mode (Settings.demo): what it registered, and the offline model it runs if any.
    demo: DemoMode | None = None
    # Traces, metrics and the Temporal runtime of the process (server/telemetry/).
    telemetry: Telemetry | None = None
    # Custom guardrail processors (`@processor` in LOOMWORK_TOOL_MODULES).
    processors: ProcessorRegistry = field(default_factory=ProcessorRegistry)

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        """Connect everything (waiting for servers that are starting) and apply migrations;
        in demo mode, register the demo too."""
        demo = None
        if settings.demo:
            # The one place production code loads demo code, and only in demo mode.
            from loomwork.demo.mode import DemoMode

            demo, settings = DemoMode.start(settings)
            offline = ", the offline model" if demo.offline_model is not None else ""
            log.info("demo mode: demo tools and agent, example workflows%s", offline)
        elif not settings.model_configured:
            log.warning("%s", NO_MODEL_CONFIGURED)
        try:
            return await cls._connect(settings, demo, migrate=migrate)
        except BaseException:
            if demo is not None:
                demo.stop()
            raise

    @classmethod
    async def _connect(cls, settings: Settings, demo: DemoMode | None, *, migrate: bool) -> Runtime:
        if not settings.database_url or not settings.redis_url or not settings.temporal_address:
            raise ValueError("Runtime.open needs database_url, redis_url and temporal_address")
        # Settings that are wrong fail before connecting.
        operator_mcp_servers = parse_operator_servers(settings.mcp_servers)
        temporal_tls_config = temporal_tls(settings)
        db = Database(settings.database_url)
        usage = UsageSystem.build(db, prices=settings.model_prices, quotas=settings.quotas)
        telemetry = Telemetry.install(settings)
        await db.open()
        telemetry.temporal.acquire()
        try:
            if migrate:
                applied = await apply_migrations(db)
                if applied:
                    log.info("applied migrations %s", applied)
            # Short commands: a burst of more than the pool holds (calls arriving at once on
            # a busy loop) waits a moment for a connection instead of failing the call.
            redis = Redis(
                connection_pool=BlockingConnectionPool.from_url(
                    settings.redis_url,
                    max_connections=REDIS_CONNECTIONS,
                    timeout=REDIS_CONNECTION_WAIT,
                    socket_timeout=5,
                    socket_connect_timeout=2,
                    **redis_options(),
                )
            )
            # Blocking reads (streams) on their own pool: open streams, each holding a
            # connection while it waits, never starve the short commands of `redis`.
            stream_redis = Redis.from_url(
                settings.redis_url,
                **redis_options(),
                socket_timeout=5,
                socket_connect_timeout=2,
                max_connections=settings.redis_stream_connections,
            )
            temporal = await connect_temporal(
                settings.temporal_address,
                settings.temporal_namespace,
                tls=temporal_tls_config,
                api_key=settings.temporal_api_key,
                runtime=telemetry.temporal.runtime,
                interceptors=telemetry.client_interceptors(),
            )
            provider = embedding_provider(
                settings.embedding_model,
                base_url=settings.openai_base_url,
                api_key=settings.openai_api_key,
            )
            await resolve_dimension(provider)
            store = await open_memory_store(settings, db)
            storage: MemoryStorage = store.storage
            cache = None
            try:
                if settings.cache_enabled:
                    cache = VersionedCache(
                        Redis.from_url(
                            settings.redis_url,
                            **redis_options(),
                            socket_timeout=1,
                            socket_connect_timeout=0.5,
                        )
                    )
                    await cache.start()
                    storage = CachedMemoryStorage(storage, cache, codec=storage_codec(settings))
                recall = MessageRecall(db, provider, storage)
                if migrate:
                    await recall.ensure_space()
            except BaseException:
                await store.close()
                raise
        except BaseException:
            await telemetry.temporal.release()
            await db.close()
            raise
        # Ids reserved in PostgreSQL: a log Redis lost goes on above the ids watchers saw.
        events = RunEventLog(redis, blocking_redis=stream_redis, ceilings=EventIdCeilings(db))
        chat_models = SharedChatModels(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            timeout=settings.model_timeout,
            max_calls=settings.model_concurrency,
        )
        working_memory = WorkingMemoryStore(storage)
        agents = AgentRegistry()
        tools = ToolRegistry([working_memory_tool(working_memory)])
        if demo is not None:
            demo.register(tools, agents, default_registry, db)
        application = load_tool_modules(settings.tool_modules)
        for tool in application.tools:
            tools.register(tool)
        for agent in application.agents:
            agents.register(agent)
        processors = ProcessorRegistry(application.processors)
        if application.modules:
            log.info(
                "tool modules %s: tools %s, agents %s, processors %s",
                ", ".join(application.modules),
                ", ".join(t.name for t in application.tools) or "none",
                ", ".join(a.name for a in application.agents) or "none",
                ", ".join(p.name for p in application.processors) or "none",
            )
        return cls(
            settings,
            db,
            redis,
            temporal,
            Memory(storage, forget_thread=recall.forget_thread),
            recall,
            working_memory,
            events,
            agents,
            tools,
            chat_models,
            usage,
            cache,
            store,
            integrations=Integrations.build(
                db,
                redis,
                secret_key=settings.secret_key,
                home=settings.home,
                public_url=settings.public_url or f"http://{settings.http_address}",
                mcp_servers=operator_mcp_servers,
                mcp_tools_ttl=timedelta(seconds=settings.mcp_tools_ttl),
            ),
            rag=rag_system(settings, db, events, chat_models, usage),
            demo=demo,
            telemetry=telemetry,
            processors=processors,
        )

    def __post_init__(self) -> None:
        self.first_steps = FirstStepWorkers(self.redis, self.settings.task_queue)
        if self.rag is not None and RAG_QUERY_TOOL not in {t.name for t in self.tools.all()}:
            self.tools.register(rag_query_tool(self.rag.retriever))
        # Workflow definitions are checked at start-up: whatever the application registered
        # on `default_registry` before starting (and, in demo mode, the examples).
        import_workflow_modules(self.settings.workflow_modules)
        self.flows.check_references(
            {tool.name: tool.args for tool in self.tools.all()},
            {agent.name for agent in self.agents.all()},
        )

    async def close(self) -> None:
        await self.speculation.close()
        await self.chat_models.aclose()
        if self.cache is not None:
            await self.cache.stop()
            await self.cache.redis.aclose()
        if self.integrations is not None:
            await self.integrations.close()
        if self.store is not None:
            await self.store.close()
        if self.events.blocking_redis is not self.redis:
            await self.events.blocking_redis.aclose()
        await self.redis.aclose()
        await self.db.close()
        if self.telemetry is not None:
            await self.telemetry.temporal.release()
        if self.demo is not None:
            self.demo.stop()
