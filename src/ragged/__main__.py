"""``python -m ragged``: the same as the ``ragged`` command."""

from ragged.cli import main

main()
