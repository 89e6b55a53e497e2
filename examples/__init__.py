"""Training jobs that really train, driven by a bso server (run them with ``python -m``)."""
