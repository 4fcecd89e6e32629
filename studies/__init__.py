"""Research studies behind docs/RESULTS.md: the ORL real-face set-up and sweep, the projection
study, the forget floor and the synthetic-data check.

Run each from the repository root as a module, e.g. ``python -m studies.orl_sweep --help``; they
import one another by package name (``from studies import orl_setup``) and train with the
product's single unlearning recipe, :func:`jaxforget.trainer.unlearn`.
"""
