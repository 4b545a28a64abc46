"""``python -m worker``: the same as the ``warden`` command."""

from worker.cli import main

main()
