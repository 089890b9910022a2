"""Numbers and counts in messages, reports and plot titles: "1 trial", "2 trials", "0.1235"."""


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and the noun, plural (``nouns``, else noun + "s") unless n is 1."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def show_number(value: object) -> str:
    """A value for a person: floats to 4 significant digits, anything else as str()."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
