"""Workflows over the tools of tests/tool_module_example.py, loaded by the processes
tests/test_tool_modules.py starts (LOOMWORK_WORKFLOW_MODULES). The test process never imports
it: its own runtimes do not have these tools, and a definition naming a missing tool is refused
at start-up."""

from __future__ import annotations

from loomwork.flows import ToolStepOutput, Workflow, default_registry, tool_step
from tests.tool_module_example import FlakyArgs, broken

# The step takes `broken`'s own retry policy (2 attempts), not the step default (3).
BROKEN_PUMP = Workflow("broken-pump", input=FlakyArgs, output=ToolStepOutput).then(
    tool_step("pump", tool=broken)
)
if not default_registry.contains(BROKEN_PUMP.commit().id, BROKEN_PUMP.version):
    default_registry.register(BROKEN_PUMP)
