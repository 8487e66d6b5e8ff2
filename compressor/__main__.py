"""``python -m amdcompress``: the same as the ``amdcompress`` command."""
from .cli import entry

entry()
