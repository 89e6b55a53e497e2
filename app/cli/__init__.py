"""Every `bso` command: main.py builds the command line, one module per subcommand.

Nothing imported by main.py imports prometheus-client (see app/telemetry/metrics.py).
"""
