"""The process's collaborators (database, clock, regimens, templates, transports), built from
settings on first use. Faces (CLI, web, Celery tasks) get one Runtime and pass its parts to the
services as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from aftercare.channels.base import Transport
from aftercare.clock import Clock, clock_from_setting
from aftercare.messages.render import MessageRenderer
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.settings import Settings
from aftercare.storage.db import Database

if TYPE_CHECKING:
    from aftercare.reminders.delivery import Deps
    from aftercare.reminders.leases import Lease
    from aftercare.triage.verdict import Triager


@dataclass
class Runtime:
    settings: Settings
    clock: Clock = field(init=False)
    _transports: dict[str, Transport] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.clock = clock_from_setting(self.settings.clock)

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.effective_database_url)

    @cached_property
    def registry(self) -> RegimenRegistry:
        return RegimenRegistry.load(self.settings.schedules_dir)

    @cached_property
    def triage(self) -> Triager:
        """Reply triage from ``schedules/triage`` (data checked now; models loaded on first use)."""
        from aftercare.triage.verdict import triager_for

        return triager_for(self.settings.schedules_dir / "triage")

    @cached_property
    def renderer(self) -> MessageRenderer:
        return MessageRenderer(self.settings.templates_dir)

    @cached_property
    def lease(self) -> Lease:
        """This process's worker lease (registered when it first claims reminders)."""
        from aftercare.reminders.leases import Lease

        return Lease(db=self.db, clock=self.clock, seconds=self.settings.worker_lease)

    @property
    def quiet(self) -> QuietHours:
        return self.settings.quiet

    def delivery_deps(self) -> Deps:
        """Everything :mod:`aftercare.reminders.delivery` needs, from this runtime."""
        from aftercare.reminders.compose import Clinic
        from aftercare.reminders.delivery import Deps

        settings = self.settings
        return Deps(
            db=self.db,
            clock=self.clock,
            quiet=self.quiet,
            registry=self.registry,
            renderer=self.renderer,
            clinic=Clinic(
                name=settings.clinic_name,
                phone=settings.clinic_phone,
                public_base_url=settings.public_base_url,
                email_from=settings.email_from,
                secret_key=settings.effective_secret_key(),
                email_reply_to=settings.email_reply_to,
                discreet_default=settings.discreet_default,
            ),
            transports=_LazyTransports(self),
        )

    def transport(self, channel: str) -> Transport:
        """The configured transport for ``sms`` or ``email`` (built once)."""
        if channel not in self._transports:
            from aftercare.channels.registry import build_transport

            self._transports[channel] = build_transport(channel, self.settings)
        return self._transports[channel]


class _LazyTransports(dict[str, Transport]):
    """Transports built on first use, so a misconfigured email transport never stops SMS."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__()
        self._rt = rt

    def __missing__(self, channel: str) -> Transport:
        transport = self._rt.transport(channel)
        self[channel] = transport
        return transport


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process-wide runtime (built on first call)."""
    global _runtime  # noqa: PLW0603 - one lazily built runtime per process
    if _runtime is None:
        from aftercare.settings import Settings

        _runtime = Runtime(Settings())
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Replace the process-wide runtime (tests and the CLI)."""
    global _runtime  # noqa: PLW0603
    _runtime = runtime
