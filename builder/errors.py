"""The builder's own errors: what a caller did wrong, named by request field. The servicer maps them
to gRPC statuses; build.py and source.py know nothing of gRPC."""
from __future__ import annotations


class BuildInputError(ValueError):
    """A request field is invalid. `field` names it; the message starts with it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class SourceNotAllowedError(BuildInputError):
    """The source resolves (symlinks followed) outside every allowed root: PERMISSION_DENIED."""

    def __init__(self, problem: str):
        super().__init__("source", problem)
