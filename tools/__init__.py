"""Command-line tools a user runs on runs and checkpoints (``python tools/<name>.py`` from the
repository root, or ``python -m tools.<name>``): checkpoint conversion, purging and re-evaluating
runs, aggregating results into tables, running a method x seed table and the leakage check.

Not installed with the ``jaxforget`` package; tests import them as ``tools.<name>`` (the
repository root is on pytest's ``pythonpath``).
"""
