"""A property-based fuzz of the JSON API from its own OpenAPI schema (schemathesis).

Every ``/api/v1`` operation gets valid-looking and invalid requests, sent with an admin's
token to the real app on SQLite and on PostgreSQL, with a few rows seeded so that ids hit real
sessions, patients and flags. No answer may be a 5xx, and every answer must be one the schema
declares, in the shape it declares.
"""

from __future__ import annotations

from collections.abc import Iterator
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

from aftercare.flags.service import raise_flag
from aftercare.runtime import Runtime
from tests.test_api import NOW, Api, make_api

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25
SEEDED_IDS = 3


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


def operations(api: Api) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if op.path.startswith("/api/v1")]


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
        @given(case=operation.as_strategy(generation_mode=mode), pick=st.integers(1, SEEDED_IDS))
        def fuzz(case: schemathesis.Case, pick: int) -> None:
            # Valid ids are steered to seeded rows, so most requests reach the code behind them.
            if mode == schemathesis.GenerationMode.POSITIVE and "id" in (
                case.path_parameters or {}
            ):
                case.path_parameters = {**(case.path_parameters or {}), "id": pick}
            case.call_and_validate(headers=headers, checks=CHECKS)

        fuzz()
