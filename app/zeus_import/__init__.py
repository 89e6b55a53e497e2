"""`bso import-zeus`: read a Zeus BSO database (source.py), map each job (mapping.py), write it.

run.py writes one transaction per job and sums up what it imported or skipped.
"""
