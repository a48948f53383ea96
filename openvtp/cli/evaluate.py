"""evaluate commands (being written)."""


def register(sub) -> None:
    """Adds no commands yet."""
