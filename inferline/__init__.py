"""inferline: the command-line front end (`inferline run`, `inferline bench`) over the engine package."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inferline")
except PackageNotFoundError:  # running from a checkout that was never pip-installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
