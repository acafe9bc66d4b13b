"""Thin gRPC handlers of order_svc: proto in, domain call, proto out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc

from delivery.order.v1 import account_service_pb2, account_service_pb2_grpc
from mesh.auth import SessionStore, current_principal, optional_principal
from mesh.errors import NotFound, Unauthenticated
from order_svc.convert import ROLE_FROM_PROTO, VEHICLE_FROM_PROTO, timestamp, user_to_proto
from order_svc.domain.accounts import Passwords, validate_sign_up
from order_svc.store.accounts import AccountStore


class AccountService(account_service_pb2_grpc.AccountServiceServicer):
    """Sign-up, login and logout for every role; sessions are opaque tokens in Redis."""

    def __init__(self, accounts: AccountStore, sessions: SessionStore, passwords: Passwords):
        self._accounts = accounts
        self._sessions = sessions
        self._passwords = passwords

    def _expire_time(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._sessions.ttl_s)

    async def SignUp(
        self, request: account_service_pb2.SignUpRequest, context: grpc.aio.ServicerContext
    ) -> account_service_pb2.SignUpResponse:
        sign_up = validate_sign_up(
            email=request.email,
            password=request.password,
            name=request.name,
            phone=request.phone,
            role=ROLE_FROM_PROTO.get(request.role),
            vehicle_type=VEHICLE_FROM_PROTO.get(request.vehicle_type),
            license_plate=request.license_plate,
            caller=optional_principal(),
        )
        password_hash = await self._passwords.hash(sign_up.password)
        user = await self._accounts.create(sign_up, password_hash)
        token = await self._sessions.create(user.id, user.role)
        return account_service_pb2.SignUpResponse(
            user=user_to_proto(user),
            session_token=token,
            expire_time=timestamp(self._expire_time()),
        )

    async def Login(
        self, request: account_service_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> account_service_pb2.LoginResponse:
        found = await self._accounts.credentials(request.email)
        ok = await self._passwords.verify(found[1] if found else None, request.password)
        if not found or not ok:
            raise Unauthenticated("wrong email or password", reason="BAD_CREDENTIALS")
        user = found[0]
        token = await self._sessions.create(user.id, user.role)
        return account_service_pb2.LoginResponse(
            user=user_to_proto(user),
            session_token=token,
            expire_time=timestamp(self._expire_time()),
        )

    async def Logout(
        self, request: account_service_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> account_service_pb2.LogoutResponse:
        await self._sessions.revoke(current_principal())
        return account_service_pb2.LogoutResponse()

    async def GetMe(
        self, request: account_service_pb2.GetMeRequest, context: grpc.aio.ServicerContext
    ) -> account_service_pb2.GetMeResponse:
        principal = current_principal()
        user = await self._accounts.get(principal.subject) if not principal.is_service else None
        if user is None:
            raise NotFound("no account stands behind this session", reason="USER_NOT_FOUND")
        return account_service_pb2.GetMeResponse(user=user_to_proto(user))
