"""Counts in messages, reports and plot titles: "1 trial", "2 trials"."""


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and the noun, plural (``nouns``, else noun + "s") unless n is 1."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"
