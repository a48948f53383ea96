"""The one exception type for user mistakes."""


class OpenVTPError(Exception):
    """A user mistake (bad path, config, image or checkpoint).

    The CLI prints it as a single line and exits non-zero; library callers can catch it.
    The message says what is wrong and where (file, key, index).
    """


class MissingPartError(OpenVTPError, RuntimeError):
    """The model lacks the part a call needs (no text tower, no pixel decoder).

    Also a RuntimeError, which is what the released model raises there, so code written
    against the released API catches it unchanged.
    """
