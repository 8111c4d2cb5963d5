"""Persistence: SQLModel tables, the engine (SQLite WAL or PostgreSQL) and Alembic migrations."""
