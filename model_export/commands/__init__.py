"""Subcommands of the ``msdn`` CLI (see ``model_export.cli``)."""
