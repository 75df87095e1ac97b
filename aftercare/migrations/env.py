"""Alembic environment: the URL comes from the caller (``aftercare migrate``), never a file."""

from __future__ import annotations

from alembic import context

from aftercare.storage.db import make_engine
from aftercare.storage.models import Base

config = context.config
url: str = config.get_main_option("sqlalchemy.url") or ""
assert url, "aftercare migrate sets sqlalchemy.url"


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
