"""Command line: ``python -m jaxforget.main --config=configs/hard_disp.py[:demo] [--workdir=DIR]``.

Flags only; the work is done by :func:`jaxforget.experiment.run`. Any config field can be set as
``--config.method.lr=0.01``; an unknown field is rejected.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, e.g. configs/hard_disp.py (add ':demo' for the"
    " embedded synthetic default).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, metrics and results go (default: runs/<method>[_demo]);"
    " re-running on the same workdir resumes.",
)


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from jaxforget import experiment  # pylint: disable=import-outside-toplevel

    try:
        experiment.run(_CONFIG.value, _WORKDIR.value)
    except experiment.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    flags.mark_flag_as_required("config")
    app.run(_main)


if __name__ == "__main__":
    run()
