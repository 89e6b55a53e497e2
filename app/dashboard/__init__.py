"""The operators' dashboard: what the optimizer decided for each job and what it saved.

routes.py (the pages) -> views.py (gathers data from app/reads.py) ->
estimates.py (savings, credible bands, pruning outcome; pure) -> templates/
rendered by render.py; the charts are drawn by app/static/dashboard.js with
the vendored Chart.js.
"""
