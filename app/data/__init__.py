"""Data files shipped with the package (the Zeus NSDI'23 traces under ``traces/``)."""
