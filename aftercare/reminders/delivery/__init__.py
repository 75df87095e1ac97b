"""Deliver reminders: check, record the attempt, commit, call the provider, record the outcome.

Write before you send: the attempt row is committed before any network I/O, so a worker killed
at any instruction leaves either a ``queued`` reminder (not yet attempted; it will be sent) or a
``sending`` one with a pending attempt (ambiguous; it is reconciled with the provider's own
record before anything is sent again, see :func:`reconcile`).

A reminder that fails for good is flagged for staff in the same transaction, and a failed SMS is
replaced by its email version (:mod:`aftercare.reminders.fallback`).

The parts, bottom first (each imports only those before it): :mod:`.context` (``Deps``, a
prepared send, the logger), :mod:`.outcome` (recording a failure, retrying), :mod:`.recovery`
(settling ambiguous sends, :func:`reconcile`), :mod:`.sending` (thread pool and pacing) and
:mod:`.batch` (checks and the batch's transaction).
"""

from aftercare.reminders.delivery.batch import deliver, deliver_batch
from aftercare.reminders.delivery.context import Deps
from aftercare.reminders.delivery.recovery import STUCK_AFTER, reconcile

__all__ = ["STUCK_AFTER", "Deps", "deliver", "deliver_batch", "reconcile"]
