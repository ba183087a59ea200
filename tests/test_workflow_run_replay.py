"""Workflow runs already under way survive a deploy: every recorded DslRun history (each
example workflow, per released version of the workflow code, recorded by
`tests/histories/record.py --workflows`) replays on the current code without a
non-determinism error."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomwork.demo.workflows import register_example_workflows
from loomwork.flows import default_registry
from tests.support import replay_failure
from workflows.dsl_run import DslRunWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("dsl_run_*.json"))
RECORDED = {path.stem: path.read_text() for path in HISTORIES}


def test_histories_of_earlier_versions_are_kept() -> None:
    # Before and after runs were announced; with the memo of waits.
    for version in ("session6_f44c1a8", "session7", "session9"):
        for workflow in ("order-pipeline", "ticket-triage", "expense-approval"):
            assert f"dsl_run_{version}_{workflow}" in RECORDED
    assert "dsl_run_session10_scheduled_order-pipeline" in RECORDED  # a schedule started it


@pytest.mark.parametrize("name", sorted(RECORDED))
async def test_a_recorded_workflow_run_replays_on_the_current_code(name: str) -> None:
    register_example_workflows(default_registry)  # as a demo-mode worker does at start-up
    failure = await replay_failure(DslRunWorkflow, f"wf/rec/{name}", RECORDED[name])
    assert failure is None, f"{name}: {failure}"
