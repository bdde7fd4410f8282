"""Error types shown to users without a traceback."""


class IltInputError(ValueError):
    """Bad input data: the message names the file, line, cut ID or key."""


class ConfigError(ValueError):
    """A configuration file is invalid. The message names the file and the key
    (also importable as ``ilt.config.ConfigError``)."""
