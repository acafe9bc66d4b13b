"""Who is calling: opaque session tokens kept in Redis, and service identities."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from mesh.clock import now_ms
from mesh.errors import PermissionDenied, Unauthenticated
from mesh.session_watch import REVOKED_CHANNEL

#: The metadata key that carries ``Bearer <token>``.
AUTHORIZATION = "authorization"
_SERVICE_PREFIX = "svc."
#: The services of the mesh; a service token for any other name is refused.
SERVICES = frozenset({"order", "location", "matching", "tracking", "edge"})


class Role(StrEnum):
    """What a principal is; stored as these lowercase strings in PostgreSQL and Redis."""

    CUSTOMER = "customer"
    DRIVER = "driver"
    MERCHANT = "merchant"
    ADMIN = "admin"
    #: Another service of the mesh.
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one RPC."""

    #: The user id, or the service name for a service.
    subject: str
    #: What the caller is.
    role: Role
    #: The hash of the session token (never the token itself), empty for services.
    session_key: str = ""
    #: When the session expires, in milliseconds since the epoch; 0 if not looked up.
    expires_at_ms: int = 0

    @property
    def is_service(self) -> bool:
        """Whether another service of the mesh is calling."""
        return self.role is Role.SERVICE

    def require_service(self, *names: str, admin: bool = True) -> None:
        """Raises PERMISSION_DENIED unless the caller is one of the services ``names``
        (or, with ``admin``, an admin)."""
        if self.role is Role.SERVICE and self.subject in names:
            return
        if admin and self.role is Role.ADMIN:
            return
        allowed = ", ".join(names)
        raise PermissionDenied(
            f"only the {allowed} service may call this",
            reason="SERVICE_ONLY",
            metadata={"allowed": allowed},
        )

    def require(self, *roles: Role) -> None:
        """Raises PERMISSION_DENIED unless the caller has one of ``roles``."""
        if self.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise PermissionDenied(
                f"this call needs one of the roles: {allowed}",
                reason="ROLE_NOT_ALLOWED",
                metadata={"role": self.role.value, "allowed": allowed},
            )


_current: ContextVar[Principal | None] = ContextVar("delivery_principal", default=None)


def current_principal() -> Principal:
    """The caller of the RPC being handled; UNAUTHENTICATED if the call carried none."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("this call needs a session: send 'authorization: Bearer <token>'")
    return principal


def optional_principal() -> Principal | None:
    """The caller of the RPC being handled, if it authenticated."""
    return _current.get()


def set_principal(principal: Principal | None) -> object:
    """Binds ``principal`` to the running RPC; returns a token for :func:`reset_principal`."""
    return _current.set(principal)


def reset_principal(token: object) -> None:
    """Undoes :func:`set_principal`."""
    _current.reset(token)  # type: ignore[arg-type]


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an ``authorization: Bearer`` entry in call metadata, if any."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated(
                "malformed authorization metadata: expected 'Bearer <token>'",
                reason="MALFORMED_AUTHORIZATION",
            )
    return None


def is_service_token(token: str) -> bool:
    """Whether ``token`` claims a service identity (valid or not); what a bearer token is, as
    :meth:`SessionStore.authenticate` tells them apart."""
    return token.startswith(_SERVICE_PREFIX)


def service_token(secret: str, service: str) -> str:
    """The bearer token service ``service`` presents to its peers."""
    mac = hmac.new(secret.encode(), service.encode(), hashlib.sha256).hexdigest()
    return f"{_SERVICE_PREFIX}{service}.{mac}"


def _session_key(token: str) -> str:
    # Only a hash of the token is stored, so a Redis dump holds no usable credentials.
    return "session:" + hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Sessions as Redis strings with a TTL: logout deletes the key, so revocation is immediate.

    Nothing is cached: every call reads the key, so a revoked session is refused by every
    process at once. Streams authenticate once; :mod:`mesh.session_watch` ends them.
    """

    def __init__(self, redis: Redis, *, ttl_s: int, service_secret: str) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._service_secret = service_secret

    @property
    def ttl_s(self) -> int:
        """How long a new session lives, in seconds."""
        return self._ttl_s

    async def create(self, user_id: str, role: Role) -> str:
        """Starts a session for ``user_id`` and returns its opaque token."""
        token = secrets.token_urlsafe(32)
        key = _session_key(token)
        # One SET with EX: a session never exists without its expiry.
        await self._redis.set(key, f"{user_id}|{role.value}", ex=self._ttl_s)
        return token

    @property
    def redis(self) -> Redis:
        """The Redis the sessions live in."""
        return self._redis

    async def revoke(self, principal: Principal) -> None:
        """Ends the session ``principal`` came with; its token is refused from now on, and the
        streams it opened, on any process, end."""
        if principal.session_key:
            await self._redis.delete(principal.session_key)
            # Deleted first: a stream that hears this cannot be opened again with the token.
            await self._redis.publish(REVOKED_CHANNEL, principal.session_key)

    async def authenticate(self, token: str, *, expiry: bool = False) -> Principal:
        """The principal a bearer token stands for; UNAUTHENTICATED if unknown or expired.

        With ``expiry``, the session's expiry is read in the same round trip (for streams,
        which outlive it otherwise).
        """
        if is_service_token(token):
            _, _, rest = token.partition(".")
            service, _, _ = rest.partition(".")
            if self._service_secret and service in SERVICES:
                expected = service_token(self._service_secret, service)
                if hmac.compare_digest(expected.encode(), token.encode()):
                    return Principal(subject=service, role=Role.SERVICE)
            raise Unauthenticated("invalid service token", reason="INVALID_SERVICE_TOKEN")
        key = _session_key(token)
        expires_at_ms = 0
        if expiry:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                value, ttl_ms = await pipe.execute()
            if isinstance(ttl_ms, int) and ttl_ms >= 0:
                expires_at_ms = now_ms() + ttl_ms
        else:
            value = await self._redis.get(key)
        if value is None:
            raise Unauthenticated(
                "the session is unknown, expired or logged out", reason="SESSION_INVALID"
            )
        text = value.decode() if isinstance(value, bytes) else value
        user_id, _, role = text.partition("|")
        return Principal(
            subject=user_id, role=Role(role), session_key=key, expires_at_ms=expires_at_ms
        )
