"""The store: the only package that knows SQL (SQLAlchemy Core on the tables of tables.py).

One module per thing stored; engine.py makes the engine, migrate.py runs Alembic from code.
"""
