"""One way in: every face enrols through ``sessions.enrolment``, which validates, plans, stores
and audits, so a session recorded from the command line leaves the same audit event as one
recorded by staff on the web."""

from __future__ import annotations

from sqlalchemy import select

from aftercare.storage.db import Database
from aftercare.storage.models import AuditEvent, TreatmentSession
from tests.cli.test_cli import (
    RECORDED,
    Aftercare,
    aftercare,  # noqa: F401 - the fixture
    enrol_args,
    succeeded,
)


def test_cli_enrol_writes_the_enrol_audit_event_for_its_session(
    aftercare: Aftercare,  # noqa: F811
) -> None:
    succeeded(aftercare("migrate"))

    result = succeeded(aftercare(*enrol_args()))

    match = RECORDED.search(result.stdout)
    assert match, result.stdout
    db = Database(aftercare.database_url)
    try:
        with db.session() as db_session:
            session = db_session.scalars(select(TreatmentSession)).one()
            events = list(db_session.scalars(select(AuditEvent)))
            assert [(e.action, e.actor_id, e.patient_id, e.session_id) for e in events] == [
                ("enrol", None, session.patient_id, session.id)
            ]
            assert events[0].detail["regimen"] == session.regimen_id
            assert events[0].detail["matched_existing"] is False
    finally:
        db.dispose()
