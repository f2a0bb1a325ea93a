"""Alembic's environment for the records database: SQLite and PostgreSQL alike.

The service calls ``Database.migrate()``, which hands over its connection (already in a transaction:
``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL) in ``config.attributes["connection"]``;
the whole upgrade then runs in that one transaction. Run from the ``alembic`` command line (with
``service/records/alembic.ini``), the URL is ``DATABASE_URL`` (default ``sqlite:///dialtone.db``).
SQLite's migrations are rendered in batch mode (it cannot ALTER most things in place).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from service.records.db import DEFAULT_URL, Database, parse_url
from service.records.models import metadata

config = context.config
if config.config_file_name is not None and not config.attributes.get("connection"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL") or DEFAULT_URL


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=parse_url(_url()),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _configure(connection)
        return
    database = Database(_url())
    try:
        with database.write() as conn:
            _configure(conn)
    finally:
        database.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
