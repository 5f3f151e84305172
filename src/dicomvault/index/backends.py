"""Which index backend a configuration asks for: PostgreSQL when its `PostgreSQL` section enables
the index (as Orthanc's PostgreSQL plugin), otherwise the embedded SQLite file in `IndexDirectory`."""

from __future__ import annotations

from dicomvault.config import Config
from dicomvault.index.database import Backend
from dicomvault.index.postgresql import PostgreSQLBackend, PostgreSQLSettings
from dicomvault.index.sqlite import SQLiteBackend


def postgresql_settings(config: Config) -> PostgreSQLSettings | None:
    return PostgreSQLSettings.from_section(config.postgresql) if config.postgresql is not None else None


def open_backend(config: Config, create: bool = True) -> Backend:
    settings = postgresql_settings(config)
    if settings is not None:
        return PostgreSQLBackend(settings, create=create)
    return SQLiteBackend(config.index_directory, create=create)
