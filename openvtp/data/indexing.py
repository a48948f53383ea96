"""Map-style datasets here compute their items from (seed, index): an index must be one Python sequences accept."""


def checked_index(index: int, length: int, what: str) -> int:
    """`index` as a sequence reads it (negative from the end); IndexError outside [-length, length)."""
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"{what} index {index} out of range for length {length}")
    return int(index)
