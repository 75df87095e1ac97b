"""A property-based fuzz of the JSON API from its own OpenAPI schema (schemathesis).

Every ``/api/v1`` operation gets valid-looking and invalid requests, sent with an admin's
token to the real app on SQLite and on PostgreSQL, with a few rows seeded so that ids hit real
sessions, patients and flags. No answer may be a 5xx, and every answer must be one the schema
declares, in the shape it declares.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import update

from aftercare.flags.service import raise_flag
from aftercare.runtime import Runtime
from aftercare.storage.models import Flag
from tests.web.test_api import NOW, Api, make_api

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Per operation and mode; raise it for a deeper run (AFTERCARE_FUZZ_EXAMPLES=500).
EXAMPLES = int(os.environ.get("AFTERCARE_FUZZ_EXAMPLES", "25"))
SEEDED_IDS = 3
ZONES = ["Europe/London", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "UTC"]


@pytest.fixture
def api(runtime: Runtime) -> Iterator[Api]:
    yield from make_api(runtime)


def seed(api: Api) -> None:
    """Rows for the small ids the fuzz is steered to: sessions, patients and flags 1-3."""
    for name in ("Ann Example", "Bob Example", "Cy Example"):
        api.enrol(patient__name=name)
    with api.rt.db.session() as s:
        for patient_id, kind in enumerate(("urgent_reply", "delivery_failed", "stale_reminder"), 1):
            raise_flag(s, kind=kind, patient_id=patient_id, text=f"{kind} needs a look", now=NOW)


def reopen_flags(api: Api) -> None:
    """So that each resolve gets as far as writing, not just a 409 after the first."""
    with api.rt.db.session() as s:
        s.execute(update(Flag).values(resolved_at=None, resolved_by_id=None, resolution_note=None))


def operations(api: Api) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if op.path.startswith("/api/v1")]


class Steer:
    """Valid values laid over part of a generated request, so that random data also gets past
    the first validation error to planning, storing and re-planning."""

    def __init__(self, draw: Any) -> None:
        self.on = draw(st.booleans())
        self.id = draw(st.integers(1, SEEDED_IDS))
        self.zone = draw(st.sampled_from(ZONES))
        self.treated_at = NOW - timedelta(minutes=draw(st.integers(0, 60 * 24 * 120)))

    def apply(self, case: schemathesis.Case) -> None:
        # Valid ids go to seeded rows, so most requests reach the code behind them.
        if "id" in (case.path_parameters or {}):
            case.path_parameters = {**(case.path_parameters or {}), "id": self.id}
        if not self.on or not isinstance(case.body, dict):
            return
        contact = {"phone": "07911 123456", "email": "fuzz@example.org", "timezone": self.zone}
        if case.operation.method.upper() == "PATCH":
            case.body = {**case.body, **{k: v for k, v in contact.items() if k in case.body}}
        elif case.operation.path == "/api/v1/sessions":
            patient = case.body.get("patient")
            case.body = {
                **case.body,
                "patient": {**(patient if isinstance(patient, dict) else {}), **contact},
                "treated_at": self.treated_at.isoformat(),
                "regimen": "micro-sclerotherapy",
                "parameters": {},
                "consent": True,
                "contraindications_checked": True,
            }


@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_api_fuzz_finds_no_server_error_and_no_answer_outside_the_schema(
    api: Api, mode: schemathesis.GenerationMode
) -> None:
    seed(api)
    ops = operations(api)
    assert len(ops) >= 11
    headers = api.as_admin

    for operation in ops:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        def fuzz(case: schemathesis.Case, data: st.DataObject) -> None:
            if mode == schemathesis.GenerationMode.POSITIVE:
                Steer(data.draw).apply(case)
            if case.operation.path.endswith("/resolve"):
                reopen_flags(api)
            case.call_and_validate(headers=headers, checks=CHECKS)

        fuzz()
