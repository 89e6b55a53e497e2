"""``python -m app.cli``: the ``bso`` command without its console script.

bench/compare.py serves old checkouts so, before and after the layout change.
"""

from app.cli.main import main

main()
