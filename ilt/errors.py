"""Error types shown to users without a traceback."""


class IltInputError(ValueError):
    """Bad input data: the message names the file, line, cut ID or key."""
