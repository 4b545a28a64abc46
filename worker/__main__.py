"""``python -m worker``: the same as the ``warden`` command."""

from .cli import main

main()
