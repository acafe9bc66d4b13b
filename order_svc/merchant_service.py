"""Thin gRPC handlers of the merchant service: profiles, opening state and menus."""

from __future__ import annotations

import grpc

from delivery.order.v1 import merchant_pb2, merchant_service_pb2, merchant_service_pb2_grpc
from mesh.auth import current_principal
from mesh.errors import FieldViolation, InvalidArgument, NotFound, Validator
from order_svc.convert_merchants import (
    HANDOFF_FROM_PROTO,
    location_of,
    menu_cursor,
    menu_item_from_proto,
    menu_item_to_proto,
    menu_page_token,
    merchant_cursor,
    merchant_page_token,
    merchant_to_proto,
    request_hash,
    seconds_of,
)
from order_svc.domain.menus import Merchant
from order_svc.domain.merchants import (
    check_request_id,
    require_manager,
    resolve_owner,
    validate_menu_item,
    validate_menu_page_size,
    validate_nearby_query,
    validate_new_merchant,
)
from order_svc.store.merchants import MerchantStore


class MerchantService(merchant_service_pb2_grpc.MerchantServiceServicer):
    """Merchants and their menus; owners and admins change them, every signed-in user reads."""

    def __init__(self, merchants: MerchantStore) -> None:
        self._merchants = merchants

    async def _merchant(self, merchant_id: str) -> Merchant:
        merchant = await self._merchants.get(merchant_id)
        if merchant is None:
            raise NotFound(
                "no merchant has this id",
                reason="MERCHANT_NOT_FOUND",
                metadata={"merchant_id": merchant_id},
            )
        return merchant

    async def CreateMerchant(
        self,
        request: merchant_service_pb2.CreateMerchantRequest,
        context: grpc.aio.ServicerContext,
    ) -> merchant_service_pb2.CreateMerchantResponse:
        caller = current_principal()
        owner = resolve_owner(caller, request.owner_user_id)
        lat, lng = location_of(request)
        new = validate_new_merchant(
            name=request.name,
            description=request.description,
            address=request.address,
            lat=lat,
            lng=lng,
            delivery_radius_m=request.delivery_radius_meters,
            avg_prep_seconds=seconds_of(request.average_prep_duration),
            currency_code=request.currency_code,
            handoff_policy=HANDOFF_FROM_PROTO.get(request.handoff_policy),
            request_id=request.request_id,
        )
        merchant = await self._merchants.create(
            new,
            owner_user_id=owner,
            caller_id=caller.subject,
            request_id=request.request_id,
            request_hash=request_hash(request),
        )
        return merchant_service_pb2.CreateMerchantResponse(merchant=merchant_to_proto(merchant))

    async def GetMerchant(
        self, request: merchant_service_pb2.GetMerchantRequest, context: grpc.aio.ServicerContext
    ) -> merchant_service_pb2.GetMerchantResponse:
        current_principal()
        merchant = await self._merchant(request.merchant_id)
        return merchant_service_pb2.GetMerchantResponse(merchant=merchant_to_proto(merchant))

    async def ListMerchants(
        self,
        request: merchant_service_pb2.ListMerchantsRequest,
        context: grpc.aio.ServicerContext,
    ) -> merchant_service_pb2.ListMerchantsResponse:
        current_principal()
        lat, lng = location_of(request)
        query = validate_nearby_query(
            lat=lat,
            lng=lng,
            radius_m=request.radius_meters,
            open_only=request.open_only,
            page_size=request.page_size,
        )
        found = await self._merchants.list_near(
            query.lat,
            query.lng,
            query.radius_m,
            open_only=query.open_only,
            # One more than the page tells whether another page follows, without an empty one.
            limit=query.page_size + 1,
            after=merchant_cursor(query, request.page_token),
        )
        page = found[: query.page_size]
        token = ""
        if len(found) > query.page_size:
            last, distance = page[-1]
            token = merchant_page_token(query, distance, last.id)
        return merchant_service_pb2.ListMerchantsResponse(
            merchants=[
                merchant_pb2.NearbyMerchant(merchant=merchant_to_proto(m), distance_meters=d)
                for m, d in page
            ],
            next_page_token=token,
        )

    async def SetMerchantOpen(
        self,
        request: merchant_service_pb2.SetMerchantOpenRequest,
        context: grpc.aio.ServicerContext,
    ) -> merchant_service_pb2.SetMerchantOpenResponse:
        caller = current_principal()
        v = Validator()
        check_request_id(v, request.request_id)
        v.raise_if_any()
        require_manager(caller, await self._merchant(request.merchant_id))
        # Setting a state (not toggling it) makes a retry harmless without an idempotency record.
        merchant = await self._merchants.set_open(request.merchant_id, request.open)
        return merchant_service_pb2.SetMerchantOpenResponse(merchant=merchant_to_proto(merchant))

    async def UpsertMenuItem(
        self,
        request: merchant_service_pb2.UpsertMenuItemRequest,
        context: grpc.aio.ServicerContext,
    ) -> merchant_service_pb2.UpsertMenuItemResponse:
        caller = current_principal()
        merchant = await self._merchant(request.merchant_id)
        require_manager(caller, merchant)
        if not request.HasField("menu_item"):
            raise InvalidArgument(FieldViolation("menu_item", "is required"))
        v = Validator()
        check_request_id(v, request.request_id)
        v.raise_if_any()
        item = validate_menu_item(
            menu_item_from_proto(request.menu_item),
            merchant_id=merchant.id,
            currency_code=merchant.currency_code,
        )
        stored = await self._merchants.upsert_menu_item(
            merchant.id,
            item,
            caller_id=caller.subject,
            request_id=request.request_id,
            request_hash=request_hash(request),
        )
        return merchant_service_pb2.UpsertMenuItemResponse(
            menu_item=menu_item_to_proto(stored, merchant.currency_code)
        )

    async def ListMenuItems(
        self,
        request: merchant_service_pb2.ListMenuItemsRequest,
        context: grpc.aio.ServicerContext,
    ) -> merchant_service_pb2.ListMenuItemsResponse:
        current_principal()
        size = validate_menu_page_size(request.page_size)
        merchant = await self._merchant(request.merchant_id)
        after = menu_cursor(merchant.id, request.available_only, request.page_token)
        found = await self._merchants.list_menu_items(
            merchant.id, available_only=request.available_only, limit=size + 1, after=after
        )
        page = found[:size]
        token = ""
        if len(found) > size:
            token = menu_page_token(merchant.id, request.available_only, page[-1])
        return merchant_service_pb2.ListMenuItemsResponse(
            menu_items=[menu_item_to_proto(item, merchant.currency_code) for item in page],
            next_page_token=token,
        )
