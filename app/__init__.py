"""bso: a Zeus-compatible batch size optimizer service.

Recurring training jobs ask which batch size to train with, report cumulative
time/energy/metric every epoch, and the service learns the batch size with
the lowest energy-time cost (Zeus, NSDI'23).

Where a request goes (imports run down this list, never up)::

    http/          the edge: the ASGI app, routes (validate, call one use case), auth,
                   middleware, limits, docs UI, schema gate, exceptions -> responses
    dashboard/     the HTML pages, on the read use cases
    cli/           every `bso` command; sim/ the trace replays `bso simulate` runs
      |
    service.py     write use cases: lock the job row, decide, persist, commit once
    reads.py       read use cases: no locks, bounded pages
    tokens.py      API tokens; sweeper.py the lease sweep; zeus_import/ `bso import-zeus`
      |
    store/         the only SQL: one module per thing stored (jobs, trials, arms, tokens,
                   groups) on the tables of tables.py and the engine of engine.py
      |
    bandit/        the pure algorithm: pruning walk, Gaussian Thompson Sampling,
                   cost and stopping rules (no database, no HTTP)

Shared by every layer: config.py, errors.py (the domain's exceptions), schemas/
(wire and read models), roles.py, urls.py, telemetry/ (logs, metrics, request context).
"""
