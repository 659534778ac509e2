"""Database tables, as SQLAlchemy 2.x declarative models."""

from datetime import UTC, datetime

from sqlalchemy import DateTime, MetaData, String, Text, func
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp, to the whole second on every database.

    SQLite's ``CURRENT_TIMESTAMP`` is naive UTC text to the second; PostgreSQL's is aware,
    to the microsecond. Values read are aware UTC cut to the second on both, so the API
    renders ``2026-01-31T12:00:05Z`` whichever database it runs on. Values written are cut
    the same way (a naive one is refused: its time zone is unknown), and SQLite stores them
    as ``CURRENT_TIMESTAMP`` does, so its rows compare and sort alike whoever set them.
    PostgreSQL keeps the microseconds of what its server default sets: SQL on the table
    sees them, the app does not.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[datetime]:
        if dialect.name == "sqlite":
            # The same DDL (DATETIME), stored as 'YYYY-MM-DD HH:MM:SS' without microseconds.
            return dialect.type_descriptor(sqlite.DATETIME(truncate_microseconds=True))
        return super().load_dialect_impl(dialect)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"{type(self).__name__} takes timezone-aware datetimes: {value!r}")
        return value.astimezone(UTC).replace(microsecond=0)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: UTC without a zone
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).replace(microsecond=0)


class Base(DeclarativeBase):
    # Names for every constraint and index, as SQLAlchemy's and Alembic's docs recommend:
    # migrations can then drop or alter them by name, on PostgreSQL and in SQLite's batch
    # mode alike. A CheckConstraint needs a name of its own: CheckConstraint(..., name="x").
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    # Set by the database; INSERT ... RETURNING hands it back in the same round trip.
    # CURRENT_TIMESTAMP, not now(): the SQL standard's name, which SQLite knows too.
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, server_default=func.current_timestamp()
    )
