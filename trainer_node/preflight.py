"""Pre-flight: one short Describe per owner, all at once, before any data is loaded or trained.

A wrong token or a stopped owner used to surface only after the baseline had trained. Now an
owner that refuses the token (UNAUTHENTICATED / PERMISSION_DENIED) or cannot be reached
(UNAVAILABLE / DEADLINE_EXCEEDED) is reported at once; if no owner is usable the run stops
before training. Failed owners are not asked again later in the run: they go into the report
with this error, exactly as an owner failing during acquisition does. Any other answer leaves
the owner in the run (acquisition decides), so pre-flight never drops an owner that might work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mycroft.errors import MycroftError
from mycroft.messages import OwnerInfo
from trainer_node.acquire import OwnerOutcome
from trainer_node.client import OwnerClient, OwnerError
from trainer_node.config import ClientSettings, OwnerEndpoint

PREFLIGHT_DEADLINE_SECONDS = 10.0
# One retry at most: enough for a blip, while a blackholed address costs at most ~2 deadlines.
PREFLIGHT_RETRIES = 1
_REFUSED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_UNREACHABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})

MakeClient = Callable[[OwnerEndpoint, ClientSettings], OwnerClient]


@dataclass(frozen=True)
class OwnerCheck:
    endpoint: OwnerEndpoint
    info: OwnerInfo | None = None
    error: OwnerError | None = None

    @property
    def problem(self) -> str | None:
        """Why the owner cannot take part ("token refused", "unreachable"), or None."""
        if self.error is None:
            return None
        if self.error.code in _REFUSED:
            return "token refused"
        if self.error.code in _UNREACHABLE:
            return "unreachable"
        return None

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def label(self) -> str:
        return f"{self.endpoint.name} ({self.endpoint.address})"

    def failed_outcome(self) -> OwnerOutcome:
        """The report entry of an owner left out after pre-flight (same error as acquisition)."""
        assert self.error is not None
        return OwnerOutcome(self.endpoint, error=str(self.error), error_code=self.error.code)


def _describe(endpoint: OwnerEndpoint, settings: ClientSettings, make: MakeClient) -> OwnerCheck:
    # Config models are frozen pydantic models: copies with the shorter limits.
    deadline = min(endpoint.deadline_seconds, PREFLIGHT_DEADLINE_SECONDS)
    short = endpoint.model_copy(update={"deadline_seconds": deadline})
    quick = settings.model_copy(update={"retries": min(settings.retries, PREFLIGHT_RETRIES)})
    try:
        with make(short, quick) as client:
            return OwnerCheck(endpoint, info=client.describe())
    except OwnerError as exc:
        return OwnerCheck(endpoint, error=exc)


def check_owners(
    owners: Sequence[OwnerEndpoint],
    settings: ClientSettings,
    make_client: MakeClient = OwnerClient,
) -> list[OwnerCheck]:
    """Describe every owner concurrently; one check per owner, in config order."""
    with ThreadPoolExecutor(max_workers=max(1, len(owners)), thread_name_prefix="preflight") as p:
        return list(p.map(lambda o: _describe(o, settings, make_client), owners))


def warning_lines(checks: Sequence[OwnerCheck], methods: Sequence[str]) -> list[str]:
    """One line per owner that cannot take part, or that does not offer a configured method."""
    lines = []
    for check in checks:
        if check.problem is not None:
            lines.append(f"{check.label}: {check.problem}, left out of this run ({check.error})")
        elif check.info is not None and check.info.methods:
            missing = [m for m in methods if m not in check.info.methods]
            if missing:
                lines.append(
                    f"{check.label}: does not offer {', '.join(map(repr, missing))} "
                    f"(offers {', '.join(check.info.methods)}); those requests will be skipped"
                )
    return lines


def require_usable(checks: Sequence[OwnerCheck]) -> None:
    """MycroftError listing every owner when none can take part: nothing to train for."""
    if any(c.usable for c in checks):
        return
    listed = "; ".join(f"{c.label}: {c.problem}" for c in checks)
    raise MycroftError(f"no owner answered: {listed}")
