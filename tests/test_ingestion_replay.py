"""Ingestions under way survive a deploy: every recorded RagIngestion history (per released
version of the workflow code, recorded by `tests/histories/record.py --ingestion`) replays on
the current code without a non-determinism error — the sequential runs of before parallel
ingestion on their own path, the parallel ones (a first run that continued as new, and the
last run it continued into) on theirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import replay_failure
from workflows.ingestion import IngestionWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("ingestion_*.json"))
RECORDED = {path.stem: path.read_text() for path in HISTORIES}


def test_histories_of_earlier_versions_are_kept() -> None:
    assert {
        "ingestion_session9",  # one document at a time, one run
        "ingestion_session10",  # parallel, continued as new every 4 activities
        "ingestion_session10_last_run",
    } <= RECORDED.keys()


@pytest.mark.parametrize("name", sorted(RECORDED))
async def test_a_recorded_ingestion_replays_on_the_current_code(name: str) -> None:
    failure = await replay_failure(IngestionWorkflow, "rag/replay/rec/replay", RECORDED[name])
    assert failure is None, f"{name}: {failure}"
