"""Errors the owner raises, each mapped to one gRPC status code in service.py."""

from __future__ import annotations

from mycroft.errors import MycroftError


class Unauthenticated(MycroftError):
    """No credentials, or credentials that match no configured trainer."""


class PermissionDenied(MycroftError):
    """A known trainer asking for something that is not its own."""


class UnknownTrainer(MycroftError):
    """A trainer id the ledger has no cap for (a config/ledger mismatch)."""


class ModelNotFound(MycroftError):
    """Select named a model the owner does not hold."""


class ModelMismatch(MycroftError):
    """A valid model that does not fit the owner's data (input shape, classes)."""


class RequestConflict(MycroftError):
    """A request id reused with different parameters."""


class BudgetExhausted(MycroftError):
    """The trainer's cap is spent and nothing already revealed can be re-sent."""


class Busy(MycroftError):
    """Every selection worker is busy and the queue is full; retry later."""


class StreamStalled(MycroftError):
    """The watchdog cancelled a stream that stopped making progress (owner_node/watchdog.py)."""


class QueryAllowanceExhausted(MycroftError):
    """The trainer has used every query (computation over the owner's rows) it was allowed."""


class SelectionFailed(MycroftError):
    """A selection failed after it began computing over the owner's rows. Its message never
    depends on the data: the query was charged, and the details stay in the owner's log."""


class DiskQuotaExceeded(MycroftError):
    """A model upload that does not fit the owner's disk quota, even after evicting the least
    recently used models that are not in use."""


class RequestTooLarge(MycroftError):
    """A Select request larger than the owner's [limits] max_request_bytes."""
