"""The SQLite backend of :class:`persistence.store.Store`.

* :mod:`~persistence.sqlite.store`: :class:`SQLiteStore`, the async facade;
* :mod:`~persistence.sqlite.writer`: the writer thread, its queue and group commit;
* :mod:`~persistence.sqlite.write_sql`: the SQL of writes;
* :mod:`~persistence.sqlite.reads`: the read-only connection pool and the queries;
* :mod:`~persistence.sqlite.schema`: the schema and its migrations.
"""

from persistence.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
