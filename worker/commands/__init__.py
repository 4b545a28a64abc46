"""The subcommands of ``warden``, one module each; :mod:`worker.cli` assembles them."""
