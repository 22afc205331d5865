"""The PostgreSQL store: several crdt-sync nodes on one database.

* :mod:`~persistence.postgres.store`: :class:`PostgresStore`, the facade;
* :mod:`~persistence.postgres.writer`: the queue and the group-commit task;
* :mod:`~persistence.postgres.write_sql`: what one write transaction runs (locks, ids,
  sids, frames, compaction);
* :mod:`~persistence.postgres.reads`: the queries of the read side;
* :mod:`~persistence.postgres.schema`: tables and migrations (run on start);
* :mod:`~persistence.postgres.errors`: PostgreSQL failures as store errors.
"""

from persistence.postgres.errors import ReadUnavailableError
from persistence.postgres.store import PostgresStore

__all__ = ["PostgresStore", "ReadUnavailableError"]
