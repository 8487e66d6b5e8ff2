"""The one exception type users of amdcompress see."""


class AmdError(Exception):
    """A failure with a one-line, user-facing explanation (bad input, corrupt
    file, missing model). The CLI prints it and exits non-zero."""
