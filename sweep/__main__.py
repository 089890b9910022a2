"""``python -m sweep`` is the ``sweep`` launcher."""

from sweep.cli import main

main()
