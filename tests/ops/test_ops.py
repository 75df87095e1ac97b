"""Operations: readiness follows the real database and broker; metrics parse; logs are JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from aftercare.clock import FixedClock
from aftercare.ops.heartbeat import DISPATCHER, beat
from aftercare.ops.logs import JsonFormatter
from aftercare.runtime import Runtime
from aftercare.web.app import create_app
from tests.conftest import _truncate, make_settings
from tests.factories import PATIENT_EMAIL, PATIENT_NAME, PATIENT_PHONE, enrol
from tests.tcp_proxy import TcpProxy


def _through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    return parts._replace(netloc=netloc).geturl()


@pytest.fixture
def proxied(
    tmp_path: Path, pg_url: str, redis_url: str, clock: FixedClock
) -> Iterator[tuple[Runtime, TcpProxy, TcpProxy]]:
    pg_proxy, redis_proxy = TcpProxy("127.0.0.1", 5432), TcpProxy("127.0.0.1", 6379)
    pg_proxy.start()
    redis_proxy.start()
    rt = Runtime(
        make_settings(
            tmp_path,
            database_url=_through(pg_proxy, pg_url),
            broker_url=_through(redis_proxy, redis_url),
        )
    )
    rt.clock = clock
    yield rt, pg_proxy, redis_proxy
    pg_proxy.stop()
    redis_proxy.stop()
    rt.db.dispose()
    direct = Runtime(make_settings(tmp_path, database_url=pg_url))
    _truncate(direct.db)
    direct.db.dispose()


def _ready(client: TestClient) -> tuple[int, dict[str, bool]]:
    response = client.get("/readyz")
    checks = {name: c["ok"] for name, c in response.json()["checks"].items()}
    return response.status_code, checks


def test_readyz_follows_postgres_and_redis_going_down_and_coming_back(
    proxied: tuple[Runtime, TcpProxy, TcpProxy], clock: FixedClock
) -> None:
    rt, pg_proxy, redis_proxy = proxied
    client = TestClient(create_app(rt))
    assert _ready(client) == (
        503,
        {"database": True, "migrations": True, "broker": True, "dispatcher": False},
    )
    with rt.db.session() as s:
        beat(s, name=DISPATCHER, now=clock.now(), detail={})
    assert _ready(client)[0] == 200

    pg_proxy.stop()
    rt.db.engine.dispose()
    status, checks = _ready(client)
    assert status == 503
    assert checks["database"] is False
    assert checks["broker"] is True
    pg_proxy.start()
    assert _ready(client)[0] == 200

    redis_proxy.stop()
    status, checks = _ready(client)
    assert status == 503
    assert checks == {"database": True, "migrations": True, "broker": False, "dispatcher": True}
    redis_proxy.start()
    assert _ready(client)[0] == 200

    clock.advance(timedelta(minutes=10))  # beat stopped: the heartbeat goes stale
    assert _ready(client) == (
        503,
        {"database": True, "migrations": True, "broker": True, "dispatcher": False},
    )


def test_healthz_answers_without_touching_the_database(tmp_path: Path) -> None:
    rt = Runtime(make_settings(tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none"))
    assert TestClient(create_app(rt)).get("/healthz").json() == {"status": "ok"}


def test_metrics_parse_and_count_reminders_by_state_channel_and_step(runtime: Runtime) -> None:
    enrol(runtime)
    text = TestClient(create_app(runtime)).get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = families["aftercare_reminders"].samples
    scheduled_sms_welcome = [
        s.value
        for s in samples
        if s.labels == {"state": "scheduled", "channel": "sms", "step": "welcome"}
    ]
    assert scheduled_sms_welcome == [1.0]
    daily = sum(s.value for s in samples if s.labels["step"] == "daily-wear")
    assert daily == 14
    assert families["aftercare_reminders_overdue"].samples[0].value == 0
    assert "aftercare_flags_open" in families


def test_json_log_lines_carry_ids_and_never_exception_messages() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("aftercare.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("reminder %s failed", 42, extra={"reminder_id": 42, "code": "21211"})
        try:
            raise ValueError(
                f"duplicate key (phone)=({PATIENT_PHONE}) {PATIENT_NAME} {PATIENT_EMAIL}"
            )
        except ValueError:
            logger.exception("could not store")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "reminder 42 failed"
    assert lines[0]["reminder_id"] == 42
    assert lines[0]["level"] == "warning"
    assert lines[1]["exc_type"] == "ValueError"
    assert any("test_ops.py" in where for where in lines[1]["exc_where"])
    for value in (PATIENT_PHONE, PATIENT_NAME, PATIENT_EMAIL):
        assert value not in stream.getvalue()


def test_celery_task_failure_log_names_the_exception_type_not_its_text() -> None:
    try:
        raise ValueError(f"duplicate key (phone)=({PATIENT_PHONE})")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "celery.app.trace",
            logging.ERROR,
            __file__,
            1,
            "Task %(name)s[%(id)s] %(description)s: %(exc)s",
            (
                {
                    "name": "aftercare.send",
                    "id": "t1",
                    "description": "raised unexpected",
                    "exc": f"ValueError('{PATIENT_PHONE}')",
                },
            ),
            sys.exc_info(),
        )
    line = JsonFormatter().format(record)
    assert json.loads(line)["event"] == "Task aftercare.send[t1] raised unexpected: ValueError"
    assert PATIENT_PHONE not in line
