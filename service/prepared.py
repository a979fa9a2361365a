"""Statements compiled once and run straight on the DBAPI cursor, for the few that run
once per email or once per row range (the sending loop, the export, the rate limits)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc as exc_types


class PreparedStatement:
    """A statement compiled once for a dialect and run straight on the DBAPI cursor.

    For the statements the sending loop runs once per email: there SQLAlchemy's execution
    machinery costs several times the statement itself (55 us against 7 us on SQLite,
    bench/dispatch.py). Parameters and results still go through each column type's own
    processors, so values look exactly as they would through SQLAlchemy. Runs in the
    transaction of the Connection it is given.
    """

    def __init__(self, statement: Any, dialect: Any, *, server_side_prepare: bool = True) -> None:
        compiled = statement.compile(dialect=dialect)
        # psycopg prepares a statement on the server after a few runs; PostgreSQL may then
        # pick one generic plan, which for some queries (the export's) is several times
        # slower than planning each run with its values.
        self._execute_options = (
            {} if server_side_prepare or dialect.name != "postgresql" else {"prepare": False}
        )
        self.sql = compiled.string
        self._compiled = compiled
        self._order = list(compiled.positiontup) if compiled.positional else None
        # dialect_impl: the type as this dialect runs it (SQLite's DateTime, say).
        self._bind_processors = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        returning = getattr(compiled, "returning", None) or []
        self._result_processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in returning
        ]

    def _parameters(self, values: dict[str, Any]) -> Any:
        named = self._compiled.construct_params(values)
        for name, processor in self._bind_processors.items():
            if processor is not None and name in named:
                named[name] = processor(named[name])
        return tuple(named[name] for name in self._order) if self._order is not None else named

    @contextmanager
    def _driver_errors(self, connection: Any, parameters: Any) -> Iterator[None]:
        """The driver's errors raised as SQLAlchemy would raise them; a lost connection is
        invalidated, as SQLAlchemy would (it never goes back to the pool)."""
        dialect = connection.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        try:
            yield
        except dbapi_error as exc:
            lost = dialect.is_disconnect(exc, connection.connection.dbapi_connection, None)
            if lost:
                connection.invalidate(exc)
            raise exc_types.DBAPIError.instance(
                self.sql, parameters, exc, dbapi_error, connection_invalidated=lost
            ) from exc

    def _cursor(self, connection: Any, values: dict[str, Any]) -> Any:
        parameters = self._parameters(values)
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            with self._driver_errors(connection, parameters):
                cursor.execute(self.sql, parameters, **self._execute_options)
        except BaseException:
            cursor.close()
            raise
        return cursor

    def rowcount(self, connection: Any, values: dict[str, Any]) -> int:
        cursor = self._cursor(connection, values)
        try:
            return cursor.rowcount
        finally:
            cursor.close()

    def all(self, connection: Any, values: dict[str, Any]) -> list[tuple[Any, ...]]:
        cursor = self._cursor(connection, values)
        try:
            rows = cursor.fetchall()
        finally:
            cursor.close()
        return [self._processed(row) for row in rows]

    def _processed(self, row: Any) -> tuple[Any, ...]:
        return tuple(
            value if processor is None else processor(value)
            for value, processor in zip(row, self._result_processors, strict=True)
        )

    def rows(self, connection: Any, values: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Every row as the driver returns it (for text columns that need no processing)."""
        cursor = self._cursor(connection, values)
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    def copy_out(
        self, connection: Any, values: dict[str, Any], *, options: str
    ) -> tuple[int, bytes]:
        """PostgreSQL: `COPY (statement) TO STDOUT WITH (options)`, as (rows, the bytes).

        The server writes the rows in the format asked for (CSV, say), so no row becomes
        a Python object at all.
        """
        parameters = self._parameters(values)
        cursor = connection.connection.dbapi_connection.cursor()
        data = bytearray()
        try:
            with self._driver_errors(connection, parameters):
                copy_sql = f"COPY ({self.sql}) TO STDOUT WITH ({options})"
                with cursor.copy(copy_sql, parameters) as copy:
                    # A row at a time, as the server sends them. Appending is 2.4 times
                    # faster than b"".join(copy), which first holds a buffer for every row.
                    for row in copy:
                        data += row
            return cursor.rowcount, bytes(data)
        finally:
            cursor.close()
