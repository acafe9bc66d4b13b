"""Typed errors that carry their gRPC code, and their mapping to google.rpc.Status (AIP-193)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

#: The ErrorInfo domain every service of the mesh reports.
ERROR_DOMAIN = "delivery.mesh"

# A refusal's answer stays small whatever the request held: a bad request of 200,000 parts
# once made a 10 MB trailer that the client could not even receive (RESOURCE_EXHAUSTED).
#: Field violations listed in one BadRequest; one more entry tells how many were left out.
MAX_FIELD_VIOLATIONS = 20
#: Longest field path or violation description, in characters (longer ones are cut).
MAX_DETAIL_CHARS = 200
#: Longest status message, in characters.
MAX_MESSAGE_CHARS = 1000
#: Longest ErrorInfo metadata value, and most metadata entries.
MAX_METADATA_CHARS = 200
MAX_METADATA_ENTRIES = 20


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, "..." marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: a dotted path (``items[0].quantity``) and why."""

    field: str
    description: str


class DomainError(Exception):
    """A refusal the caller can act on; subclasses fix the gRPC code.

    ``reason`` is a stable UPPER_SNAKE identifier clients may branch on; ``metadata`` adds
    machine-readable context (ids, expected states) to the ``ErrorInfo`` detail.
    """

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    default_reason: str = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {
            clip(str(k), MAX_METADATA_CHARS): clip(str(v), MAX_METADATA_CHARS)
            for k, v in list((metadata or {}).items())[:MAX_METADATA_ENTRIES]
        }


class InvalidArgument(DomainError):
    """The request is malformed; ``violations`` names each bad field.

    At most :data:`MAX_FIELD_VIOLATIONS` are kept, each cut to :data:`MAX_DETAIL_CHARS`; when
    there were more (``omitted`` counts ones never passed in), a last violation with an empty
    field path says how many were left out.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Iterable[FieldViolation] | FieldViolation,
        message: str | None = None,
        *,
        reason: str | None = None,
        omitted: int = 0,
    ) -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = bounded_violations(violations, omitted=omitted)
        summary = "; ".join(
            f"{v.field}: {v.description}" if v.field else v.description for v in self.violations
        )
        super().__init__(message or f"invalid request: {summary}", reason=reason)


def bounded_violations(
    violations: Iterable[FieldViolation], *, omitted: int = 0
) -> list[FieldViolation]:
    """The first :data:`MAX_FIELD_VIOLATIONS` of ``violations``, each cut short, plus one
    saying how many more there were (``omitted`` counts ones the caller never listed)."""
    kept: list[FieldViolation] = []
    more = omitted
    for v in violations:
        if len(kept) < MAX_FIELD_VIOLATIONS:
            kept.append(
                FieldViolation(
                    clip(v.field, MAX_DETAIL_CHARS), clip(v.description, MAX_DETAIL_CHARS)
                )
            )
        else:
            more += 1
    if more:
        kept.append(FieldViolation("", f"and {more} more violations, not listed"))
    return kept


class Unauthenticated(DomainError):
    """No valid session or service identity came with the call."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    """The named resource does not exist, or the caller may not know it exists."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    """The resource the caller tried to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The system is not in a state that allows this (an illegal transition, say)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    """A concurrent change won; the caller may re-read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class ResourceExhausted(DomainError):
    """A quota or size limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    """A dependency is down; retrying later with backoff may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


@dataclass(slots=True)
class Validator:
    """Collects field violations so a handler reports every bad field at once.

    Past :data:`MAX_FIELD_VIOLATIONS` it only counts them (``omitted``): a request with a
    million bad parts costs a counter, not a million objects.
    """

    violations: list[FieldViolation] = field(default_factory=list)
    #: Violations recorded beyond :data:`MAX_FIELD_VIOLATIONS`, counted but not kept.
    omitted: int = 0

    def add(self, field_path: str, description: str) -> None:
        """Records that ``field_path`` is bad, and why."""
        if len(self.violations) < MAX_FIELD_VIOLATIONS:
            self.violations.append(FieldViolation(field_path, description))
        else:
            self.omitted += 1

    def check(self, ok: bool, field_path: str, description: str) -> bool:
        """Records a violation unless ``ok``; returns ``ok`` so dependent checks can be skipped."""
        if not ok:
            self.add(field_path, description)
        return ok

    def raise_if_any(self) -> None:
        """Raises :class:`InvalidArgument` carrying every violation recorded so far."""
        if self.violations:
            raise InvalidArgument(self.violations, omitted=self.omitted)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status_proto(error: DomainError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for ``error``: ErrorInfo always, BadRequest for bad input."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    ]
    if isinstance(error, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=details)


def internal_status(message: str) -> status_pb2.Status:
    """The status for a fault of ours (never of the caller's making)."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)
