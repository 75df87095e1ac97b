"""The compose file and the Dockerfile agree with the Compose spec and with the code.

No Docker engine runs here, so this checks what can be checked without one: the schema, that
every command is a real command, that every AFTERCARE_* variable is a real setting, health checks.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aftercare.cli.main import cli
from aftercare.settings import _SECRET_FIELDS, Settings
from aftercare.worker.celeryconfig import DISPATCH_QUEUE, SEND_QUEUE, celery_settings, parse_queues

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _setting_names() -> set[str]:
    names = {f"AFTERCARE_{name.upper()}" for name in Settings.model_fields}
    return names | {f"AFTERCARE_{name.upper()}_FILE" for name in _SECRET_FIELDS}


def _cli_commands() -> set[str]:
    names = {c.name or c.callback.__name__ for c in cli.registered_commands if c.callback}
    names |= {g.name for g in cli.registered_groups if g.name}
    return {n.replace("_", "-") for n in names}


def test_compose_file_validates_against_the_compose_specification() -> None:
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_the_services_the_operator_expects_each_with_a_health_check() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "api",
        "dispatcher",
        "worker",
        "beat",
        "redis",
        "postgres",
        "migrate",
    }
    for name, service in services.items():
        if name != "migrate":
            assert "healthcheck" in service, name
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["dispatcher"]["deploy"]["replicas"] == 1
    assert "--appendonly" in services["redis"]["command"]
    assert any("postgresql/data" in v for v in services["postgres"]["volumes"])
    for name in ("api", "dispatcher", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_every_aftercare_variable_in_compose_and_env_example_is_a_real_setting() -> None:
    text = COMPOSE.read_text() + (REPO / ".env.example").read_text()
    used = set(re.findall(r"\bAFTERCARE_[A-Z_]+\b", text))
    assert used, "no settings found: the test would prove nothing"
    assert used <= _setting_names(), used - _setting_names()


def test_every_service_command_is_something_the_code_provides() -> None:
    commands = _cli_commands()
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if not command or name in ("redis", "postgres"):
            continue
        if command[0] == "aftercare":
            assert command[1] in commands, (name, command)
        elif command[0] == "uvicorn":
            target = command[command.index("--factory") + 1]
            module, attr = target.split(":")
            assert callable(getattr(importlib.import_module(module), attr))
        else:
            pytest.fail(f"{name}: unexpected command {command}")
    for name in ("dispatcher", "worker"):
        service = _compose()["services"][name]
        health = service["healthcheck"]["test"]
        assert health[0] == "CMD-SHELL", name
        words = health[1].split()
        module, attr = words[words.index("--app") + 1].split(":")
        assert getattr(importlib.import_module(module), attr).main == "aftercare"
        # Each container pings its own node, not whichever worker answers first.
        node = service["command"][service["command"].index("--hostname") + 1]
        # "$$" is Compose's escape: the container's shell expands $HOSTNAME, as Celery's %h.
        assert words[words.index("--destination") + 1] == node.replace("%h", "$$HOSTNAME")
    assert "status" in commands  # the beat health check


def test_dispatch_and_send_run_in_separate_workers_that_cover_every_queue() -> None:
    services = _compose()["services"]

    def queues(name: str) -> list[str]:
        command = services[name]["command"]
        assert command[:2] == ["aftercare", "worker"], name
        return parse_queues(command[command.index("--queues") + 1])

    assert queues("dispatcher") == [DISPATCH_QUEUE]
    dispatcher = services["dispatcher"]["command"]
    assert dispatcher[dispatcher.index("--concurrency") + 1] == "1"
    assert queues("worker") == [SEND_QUEUE]
    settings = Settings(_env_file=None, broker_url="redis://127.0.0.1:6379/0")
    routed = {route["queue"] for route in celery_settings(settings)["task_routes"].values()}
    assert routed == {DISPATCH_QUEUE, SEND_QUEUE}


def test_dockerfile_runs_as_non_root_from_the_lock_without_build_tools() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(stages) == 2
    assert all("slim" in s for s in stages)
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER aftercare$", final, flags=re.MULTILINE)
    assert "requirements.lock" in text
    assert not re.search(r"apt-get install|gcc|build-essential", final)
    for var in re.findall(r"\bAFTERCARE_[A-Z_]+\b", text):
        assert var in _setting_names(), var
