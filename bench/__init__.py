"""Benchmarks of the service (not tests): run each as a module from the repository root.

``python -m bench.hotloop``, ``python -m bench.compare``, ``python -m bench.history``,
``python -m bench.memory``, ``python -m bench.statements``, ``python -m bench.dbcost``;
``bench.hello_app`` is the hello-world ceiling served by uvicorn.
"""
