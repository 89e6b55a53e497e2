"""bso: a Zeus-compatible batch size optimizer service.

Recurring training jobs ask which batch size to train with, report cumulative
time/energy/metric every epoch, and the service learns the batch size with
the lowest energy-time cost (Zeus, NSDI'23).

Where a request goes::

    routes.py      HTTP: validate, call one use case, map errors (errors.py)
      |
    service.py     write use cases: lock the job row, decide, persist, commit once
    reads.py       read use cases: no locks, bounded pages
      |
    repository.py  the only SQL: SQLAlchemy Core statements on the tables of
                   models.py, run on the engine of db.py (asyncpg / aiosqlite)
      |
    bandit/        the pure algorithm: pruning walk, Gaussian Thompson Sampling,
                   cost and stopping rules (no database, no HTTP)

sim/ replays the NSDI'23 traces through the service or the pure algorithm.
"""
