"""The one exception type that carries a refusal to the administrator (imports nothing)."""


class CommandError(Exception):
    """A refusal with a one-line message for the administrator; nothing was changed."""
