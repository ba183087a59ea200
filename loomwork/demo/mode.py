"""Demo mode (`loomwork up --demo`, LOOMWORK_DEMO=true): what a process adds to itself.

Production code reaches the demo through this module only, and only when
`Settings.demo` is on (`server/runtime.py` imports it then): the demo tools and agent,
the example workflows and, when no model is configured, the offline model.
"""

from __future__ import annotations

from loomwork.agents.definitions import AgentRegistry
from loomwork.config import Settings
from loomwork.demo.agents import demo_agents
from loomwork.demo.offline_model import OFFLINE_MODEL, offline_model_server
from loomwork.demo.tools import demo_tools
from loomwork.demo.workflows import register_example_workflows
from loomwork.flows.registry import WorkflowRegistry
from loomwork.storage.database import Database
from loomwork.testing import ScriptedModelServer
from loomwork.tools import ToolRegistry


class DemoMode:
    """The demo of one process: what it registers, and the offline model it runs if any."""

    def __init__(self, offline_model: ScriptedModelServer | None = None) -> None:
        self.offline_model = offline_model

    @classmethod
    def start(cls, settings: Settings) -> tuple[DemoMode, Settings]:
        """Demo mode for a process configured by `settings`, and the settings it runs with:
        with no model configured, they point at the offline model this starts."""
        if settings.model_configured:
            return cls(), settings
        server = offline_model_server()
        base_url = server.start_in_thread()
        offline = {
            "openai_base_url": base_url,
            "openai_api_key": OFFLINE_MODEL,
            "chat_model": OFFLINE_MODEL,
        }
        return cls(server), settings.model_copy(update=offline)

    def register(
        self, tools: ToolRegistry, agents: AgentRegistry, flows: WorkflowRegistry, db: Database
    ) -> None:
        """Add the demo tools, the demo agent and the example workflows."""
        for tool in demo_tools(db):
            tools.register(tool)
        for agent in demo_agents():
            agents.register(agent)
        register_example_workflows(flows)

    def stop(self) -> None:
        """Stop the offline model, if this process runs one."""
        if self.offline_model is not None:
            self.offline_model.stop_in_thread()
            self.offline_model = None
