"""amdcompress: lossless compression with learned generative models.

Public API: :func:`compress`, :func:`decompress`, :func:`info`; errors are
:class:`AmdError`. The entropy-coding layer is :mod:`amdcompress.codecs`, the
models :mod:`amdcompress.models`.
"""
from .api import compress, decompress, info
from .codecs.errors import AmdError

__version__ = "0.1.0"
__all__ = ["compress", "decompress", "info", "AmdError", "__version__"]
