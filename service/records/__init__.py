"""Call records and shared state in a real database (SQLAlchemy 2.0 + alembic; SQLite or PostgreSQL).

- :mod:`~service.records.store`: ``RecordStore``: ``put(record, started_at, ended_at)`` off the call path;
  a writer thread, a bounded queue, retries through outages;
- :mod:`~service.records.state`: ``SharedState`` (``store.state``): single-use stream tokens, call
  decisions, live calls per instance;
- :mod:`~service.records.db`: ``Database``: the URL, the engine, the migrations, the reads;
- :mod:`~service.records.shape`: ``record_to_json``: the record's JSON document;
- :mod:`~service.records.picture`: a call's timeline as SVG;
- :mod:`~service.records.cli`: ``python -m service calls …``.
"""

from service.records.db import DEFAULT_URL, CallFilter, Database, Totals
from service.records.errors import (
    DatabaseUnavailable,
    NotFound,
    RecordsConfigError,
    RecordsError,
    StateUnavailable,
)
from service.records.pricing import Pricing, pricing_from_env
from service.records.shape import record_to_json
from service.records.state import SharedState
from service.records.store import RecordStore, StoreStats

__all__ = [
    "DEFAULT_URL",
    "CallFilter",
    "Database",
    "DatabaseUnavailable",
    "NotFound",
    "Pricing",
    "RecordStore",
    "RecordsConfigError",
    "RecordsError",
    "SharedState",
    "StateUnavailable",
    "StoreStats",
    "Totals",
    "pricing_from_env",
    "record_to_json",
]
