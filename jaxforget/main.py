"""Command line: ``python -m jaxforget.main --config=configs/hard_disp.py[:demo] [--workdir=DIR]``.

Flags only; the work is done by :func:`jaxforget.experiment.run`. Any config field can be set as
``--config.method.lr=0.01``; an unknown field is rejected.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxforget import experiment, trainer
from jaxforget.errors import UserError

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
    "Where checkpoints, metrics and results go (default: runs/<method>_<data>, _demo for the"
    " demo); re-running on the same workdir with the same settings resumes.",
)


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        experiment.run(_CONFIG.value, _WORKDIR.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except trainer.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a bad ``--config.<field>=<value>`` turned into a one-line error (the
    config flag reports a misspelt field as a bare AttributeError/KeyError traceback)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        if any(ln.startswith("Traceback") for ln in lines):  # a config file that raised
            lines = [lines[0], lines[-1]]
        print("error: " + "\n".join(lines) + "\nPass --helpfull to see the flags.", file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        print(f"error: cannot apply {' '.join(bad) or 'the --config flags'}: {e}. Config fields "
              "are listed, with their meaning, in configs/<method>.py and jaxforget/config.py; configs are "
              "locked, so a field that does not exist there is refused.", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    flags.mark_flag_as_required("config")
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
