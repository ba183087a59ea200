"""Project contracts: generated code fresh, protos lint clean, layers hold, compose parses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name) or str(BIN / name)
    assert Path(found).exists(), f"{name} must be installed (dev extras)"
    return found


def test_generated_protobuf_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_is_clean() -> None:
    result = subprocess.run(
        [_tool("buf"), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers_hold() -> None:
    result = subprocess.run(
        [_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_has_the_production_shape() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    images = [str(svc.get("image", "")) for svc in services.values()]
    assert any(image.startswith("pgvector/pgvector:pg18") for image in images)
    assert any(image.startswith(("redis", "valkey/")) for image in images)
    assert any(image.startswith("temporalio/auto-setup") for image in images)
    assert any(image.startswith("temporalio/ui") for image in images)
    roles = {name: svc.get("command") for name, svc in services.items()}
    workers = [n for n, cmd in roles.items() if cmd == ["worker"]]
    servers = [n for n, cmd in roles.items() if cmd == ["server"]]
    assert len(workers) >= 2 and len(servers) >= 2
    for name in workers + servers:
        env = services[name]["environment"]
        assert {"DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS", "LOOMWORK_TOKENS"} <= set(env)
        assert services[name]["build"] == "."
