"""The error a user can fix from the command line (a path, a field, a value).

``python -m jaxforget.main`` and the tools print its message as one line and exit with status 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix from the command line (a path, a field, a value)."""
