"""``python -m ragged``: the same as the ``ragged`` command."""

from ragged.cli.main import main

main()
