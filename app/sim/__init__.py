"""Trace-driven what-if simulation of recurring training jobs (``bso simulate``).

``traces`` turns the Zeus NSDI'23 traces into simulation cases, ``engines``
speaks to the optimiser (the real service over HTTP, or the pure algorithm in
memory), ``replay`` plays the recurrences and the baselines, ``command`` is the
CLI and ``plot`` draws the results.
"""
