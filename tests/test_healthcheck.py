"""`loomwork health`, the image's HEALTHCHECK: a serving gRPC server here, or else a worker of
this host polling the task queue."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from loomwork.config import Settings
from loomwork.errors import Unavailable
from server.healthcheck import check_health
from server.worker import build_worker
from tests.conftest import free_port
from tests.support import ROOT, own_runtime, unique


async def test_a_serving_grpc_server_is_healthy(settings: Settings, grpc_address: str) -> None:
    assert "SERVING" in await check_health(
        settings.model_copy(update={"grpc_address": grpc_address})
    )


async def test_a_polling_worker_of_this_host_is_healthy(settings: Settings) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # no server here: a worker's container
    async with own_runtime(settings) as runtime:
        alone = runtime.settings.model_copy(update={"grpc_address": nowhere})
        with pytest.raises(Unavailable, match="no worker of this host"):
            await check_health(alone)
        worker = build_worker(runtime)  # its default identity: pid@host
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(50):  # until Temporal lists its pollers
                try:
                    assert "polling" in await check_health(alone)
                    break
                except Unavailable:
                    await asyncio.sleep(0.2)
            else:
                pytest.fail("the worker never showed up as polling")
        finally:
            await worker.shutdown()
            await task


def test_the_command_exits_1_saying_what_is_unhealthy(embedded) -> None:
    env = dict(
        os.environ,
        LOOMWORK_GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
        LOOMWORK_TASK_QUEUE=unique("nobody-polls"),
        COLUMNS="200",
    )
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "health"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "no gRPC server listens" in output and "Traceback" not in output
