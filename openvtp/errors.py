"""The one exception type for user mistakes."""


class OpenVTPError(Exception):
    """A user mistake (bad path, config, image or checkpoint).

    The CLI prints it as a single line and exits non-zero; library callers can catch it.
    The message says what is wrong and where (file, key, index).
    """
