"""The one exception type users see: the CLI prints its message (no traceback) and exits 1."""


class LineageError(Exception):
    """A user-facing error: bad input, unknown name, refused operation. Nothing was changed."""


class NotFoundError(LineageError):
    """A named model, domain, plan, run or cache does not exist."""


class ConflictError(LineageError):
    """A name already exists, an edge would make a cycle, or versions disagree."""
