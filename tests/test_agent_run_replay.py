"""Runs already under way survive a deploy: every recorded AgentRun history (one per released
version of the workflow code, recorded by `tests/histories/record.py`) replays on the current
code without a non-determinism error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import replay_failure
from workflows.agent_run import AgentRunWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("agent_run_*.json"))
RECORDED = {path.stem: path.read_text() for path in HISTORIES}


def test_histories_of_earlier_versions_are_kept() -> None:
    assert {
        "agent_run_session2_ade0141",
        "agent_run_session3_5a1910d",
        "agent_run_session7",
        "agent_run_session8_client_tools",
        "agent_run_session9_waits",  # an approval timeout (its timer), the memo of waits
        # An agent called as a tool (a child workflow, its approval passed on), a handoff.
        "agent_run_session9_sub_agents",
        "agent_run_session9_sub_agents_sub_run",  # the sub-run: reports to its caller
        # A first step that fell back to the agent's next model (a patch marker, a second
        # start activity), and a run a schedule started (its run id from its workflow id).
        "agent_run_session10_fallback",
        "agent_run_session10_scheduled",
        # A fork (ForkRun): its first step is the original's fourth, three steps reused.
        "agent_run_session10_fork",
    } <= RECORDED.keys()


@pytest.mark.parametrize("name", sorted(RECORDED))
async def test_a_recorded_agent_run_replays_on_the_current_code(name: str) -> None:
    failure = await replay_failure(AgentRunWorkflow, f"agent/assistant/rec/{name}", RECORDED[name])
    assert failure is None, f"{name}: {failure}"
