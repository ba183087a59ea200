"""`loomwork rag …` against the real server: create, ingest files with progress, query, answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from clients.cli import register
from loomwork.testing import ScriptedModelServer, Turn
from tests.test_rag_extract import minimal_pdf

app = typer.Typer()
register(app)


@pytest.fixture(scope="module")
def env(grpc_address: str, token: str) -> dict[str, str]:
    return {"LOOMWORK_GRPC_ADDRESS": grpc_address, "LOOMWORK_TOKEN": token, "COLUMNS": "200"}


async def _cli(env: dict[str, str], *args: str) -> Result:
    runner = CliRunner(env=env)
    result = await asyncio.to_thread(runner.invoke, app, list(args))
    assert result.exit_code == 0, result.output
    return result


async def test_rag_commands(
    env: dict[str, str], tmp_path: Path, model_server: ScriptedModelServer
) -> None:
    index = f"cli_{uuid.uuid4().hex[:8]}"
    await _cli(env, "rag", "create-index", index, "--description", "CLI test")
    (tmp_path / "notes.md").write_text("# Notes\n\n## Tides\n\nTides follow the moon.\n")
    (tmp_path / "fruit.pdf").write_bytes(minimal_pdf(["Apples grow on trees.", "Pears too."]))
    out = (
        await _cli(
            env,
            "rag",
            "ingest",
            index,
            str(tmp_path / "notes.md"),
            str(tmp_path / "fruit.pdf"),
            "--strategy",
            "markdown",
        )
    ).output
    assert "2 succeeded · 0 failed (2 files; ingestions: ing_" in out
    docs = json.loads((await _cli(env, "rag", "documents", index, "--json")).stdout)
    assert sorted(d["file_name"] for d in docs) == ["fruit.pdf", "notes.md"]
    hits = json.loads((await _cli(env, "rag", "query", index, "moon", "--json")).stdout)
    assert hits[0]["chunk"]["heading_path"] == ["Notes", "Tides"]
    model_server.push(Turn(text="The moon drives tides [1]."))
    answer = (await _cli(env, "rag", "answer", index, "What drives tides?")).output
    assert "The moon drives tides [1]." in answer and "[1] Notes" in answer
    listed = json.loads((await _cli(env, "rag", "indexes", "--json")).stdout)
    assert any(i["name"] == index and i["document_count"] == 2 for i in listed)
    await _cli(env, "rag", "delete-index", index)
