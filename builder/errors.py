"""The builder's own errors: what a caller did wrong, named by request field. The servicer maps them
to gRPC statuses; build.py and source.py know nothing of gRPC."""
from __future__ import annotations

from engine.errors import InvalidParameterError


class BuildInputError(InvalidParameterError):
    """A request field is invalid: the engine's field-naming error, raised for the builder's own fields."""


class SourceNotAllowedError(BuildInputError):
    """The source resolves (symlinks followed) outside every allowed root: PERMISSION_DENIED."""

    def __init__(self, problem: str):
        super().__init__("source", problem)
