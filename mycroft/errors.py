"""Errors that carry a message meant for the user (CLI) or the wire (gRPC status)."""


class MycroftError(Exception):
    """Base class: the message is shown to the user as is, without a traceback."""


class DataError(MycroftError):
    """A data file is missing or malformed. The message names the file and the problem."""


class ModelFileError(MycroftError):
    """A model file is corrupt, truncated, or does not match its config."""


class ConfigError(MycroftError):
    """A config or scenario file is invalid. The message names the field."""


class InvalidRequest(MycroftError):
    """A request payload is malformed. `field` names the offending field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
