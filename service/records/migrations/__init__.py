"""Alembic migrations of the records database (``env.py``, ``versions/``)."""
