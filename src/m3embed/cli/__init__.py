"""Command line: ``m3embed encode | index | search | eval | train | random-checkpoint``.

One module per command group; importing it registers its commands on the shared typer app.
"""

from . import encode as _encode  # noqa: F401
from . import eval as _eval  # noqa: F401
from . import index as _index  # noqa: F401
from . import serve as _serve  # noqa: F401
from . import train as _train  # noqa: F401
from .app import app

__all__ = ["app"]
