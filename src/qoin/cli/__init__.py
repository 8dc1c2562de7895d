"""The ``qoin`` command line."""
