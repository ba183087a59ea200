"""Runs already under way survive a deploy: every recorded AgentRun history (one per released
version of the workflow code, recorded by `tests/histories/record.py`) replays on the current
code without a non-determinism error."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from server.worker import workflow_runner
from workflows.agent_run import AgentRunWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("agent_run_*.json"))
RECORDED = {path.stem: path.read_text() for path in HISTORIES}


def test_histories_of_earlier_versions_are_kept() -> None:
    assert {
        "agent_run_session2_ade0141",
        "agent_run_session3_5a1910d",
        "agent_run_session7",
    } <= RECORDED.keys()


@pytest.mark.parametrize("name", sorted(RECORDED))
async def test_a_recorded_agent_run_replays_on_the_current_code(name: str) -> None:
    history = WorkflowHistory.from_json(f"agent/assistant/rec/{name}", RECORDED[name])
    replayer = Replayer(
        workflows=[AgentRunWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner("strict"),
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{name}: {result.replay_failure}"
