"""Errors the engine raises for bad input. Callers (the worker, the CLI) map them to their own
statuses; the engine itself knows nothing of gRPC."""


class InferlineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidParameterError(InferlineError, ValueError):
    """A request or engine parameter is invalid. `field` names it; the message starts with it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ModelNotFoundError(InvalidParameterError):
    """The model path or name does not point at a loadable model."""

    def __init__(self, problem: str):
        super().__init__("model", problem)


class UnsupportedModelError(InvalidParameterError):
    """The checkpoint exists but uses an architecture or feature the engine does not implement."""

    def __init__(self, problem: str):
        super().__init__("model", problem)
