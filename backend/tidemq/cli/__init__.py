"""The ``tidemq`` command line. Nothing imports this package."""
