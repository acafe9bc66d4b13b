"""The order state machine: a property test over random call sequences, and the docs table."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.auth import Principal, Role
from mesh.errors import DomainError
from order_svc.domain.orders import (
    RULES,
    Action,
    OrderRef,
    OrderStatus,
    Party,
    plan,
    settle_cancellation,
)

S = OrderStatus
# Written out here, independently of RULES: the status edges the docs allow.
ALLOWED_EDGES = {
    (S.PENDING, S.CONFIRMED),
    (S.PENDING, S.CANCELLED),
    (S.CONFIRMED, S.PREPARING),
    (S.CONFIRMED, S.READY_FOR_PICKUP),
    (S.PREPARING, S.READY_FOR_PICKUP),
    (S.READY_FOR_PICKUP, S.PICKED_UP),
    (S.PICKED_UP, S.DELIVERED),
    (S.CONFIRMED, S.CANCELLED),
    (S.PREPARING, S.CANCELLED),
    (S.READY_FOR_PICKUP, S.CANCELLED),
    (S.PICKED_UP, S.CANCELLED),
}
COURIER_STATES = {S.CONFIRMED, S.PREPARING, S.READY_FOR_PICKUP}

PRINCIPALS = {
    "customer": Principal("c1", Role.CUSTOMER),
    "other_customer": Principal("c2", Role.CUSTOMER),
    "merchant": Principal("m1", Role.MERCHANT),
    "other_merchant": Principal("m2", Role.MERCHANT),
    "driver_a": Principal("d1", Role.DRIVER),
    "driver_b": Principal("d2", Role.DRIVER),
    "admin": Principal("a1", Role.ADMIN),
    "matching": Principal("matching", Role.SERVICE),
}

steps = st.lists(
    st.tuples(
        st.sampled_from(list(Action)),
        st.sampled_from(sorted(PRINCIPALS)),
        st.sampled_from([None, "d1", "d2"]),
        st.sampled_from([0, 0, 1, 2, 3, 5]),
    ),
    max_size=30,
)


@dataclass
class History:
    statuses: list[OrderStatus] = field(default_factory=lambda: [S.PENDING])


@settings(max_examples=400, deadline=None)
@given(steps)
def test_no_sequence_of_calls_reaches_a_forbidden_state(calls) -> None:
    order = OrderRef("o1", S.PENDING, 1, "c1", "m1", None)
    history = History()
    for action, who, driver, expected in calls:
        principal = PRINCIPALS[who]
        try:
            change = plan(order, action, principal, expected_version=expected, driver_id=driver)
        except DomainError as refused:
            assert refused.reason  # every refusal says why
            continue
        before = order
        order = replace(
            order, status=change.to_status, version=order.version + 1, driver_id=change.driver_id
        )
        edge = (before.status, order.status)
        if edge[0] == edge[1]:
            # Only courier changes leave the status alone, and only before pickup.
            assert action in (Action.ASSIGN_COURIER, Action.REASSIGN_COURIER)
            assert before.status in COURIER_STATES
        else:
            assert edge in ALLOWED_EDGES, edge
            history.statuses.append(order.status)
        assert before.status not in (S.DELIVERED, S.CANCELLED), "terminal states are final"
        assert order.version == before.version + 1
        if expected:
            assert expected == before.version
        if order.status is S.PICKED_UP:
            assert order.driver_id, "nobody picks up without a courier"
        if before.status in (S.PICKED_UP, S.DELIVERED):
            assert order.driver_id == before.driver_id, "the courier cannot change after pickup"
        if principal.role is Role.CUSTOMER:
            assert principal.subject == "c1" and action is Action.CANCEL
            assert before.status is not S.PICKED_UP
        if principal.role is Role.DRIVER:
            assert principal.subject == before.driver_id
            assert action in (Action.PICK_UP, Action.DELIVER)
        if principal.subject in ("c2", "m2"):
            raise AssertionError("a stranger changed the order")
    if order.status is S.DELIVERED:
        assert S.PICKED_UP in history.statuses


def test_strangers_get_not_found_and_wrong_parties_permission_denied() -> None:
    order = OrderRef("o1", S.PENDING, 1, "c1", "m1", None)
    for who, code in (("other_customer", "NOT_FOUND"), ("other_merchant", "NOT_FOUND")):
        try:
            plan(order, Action.CONFIRM, PRINCIPALS[who])
        except DomainError as err:
            assert err.code.name == code
        else:
            raise AssertionError("a stranger confirmed the order")
    try:
        plan(order, Action.CONFIRM, PRINCIPALS["customer"])
    except DomainError as err:
        assert err.code.name == "PERMISSION_DENIED"
        assert err.reason == "ACTION_NOT_ALLOWED"


def test_a_stale_expected_version_is_aborted_and_an_illegal_move_fails_precondition() -> None:
    order = OrderRef("o1", S.CONFIRMED, 4, "c1", "m1", None)
    for kwargs, code, reason in (
        ({"expected_version": 3}, "ABORTED", "VERSION_MISMATCH"),
        ({}, "FAILED_PRECONDITION", "ILLEGAL_TRANSITION"),
    ):
        try:
            plan(order, Action.CONFIRM, PRINCIPALS["merchant"], **kwargs)
        except DomainError as err:
            assert (err.code.name, err.reason) == (code, reason)
        else:
            raise AssertionError("the transition went through")


def test_cancellation_money() -> None:
    amounts = {"subtotal_minor": 2000, "delivery_fee_minor": 300, "tip_minor": 200}
    early = settle_cancellation(status=S.CONFIRMED, party=Party.CUSTOMER, **amounts)
    assert (early.refund_minor, early.cancellation_fee_minor) == (2500, 0)
    late = settle_cancellation(status=S.PREPARING, party=Party.CUSTOMER, **amounts)
    assert (late.refund_minor, late.cancellation_fee_minor) == (500, 2000)
    merchant = settle_cancellation(status=S.PREPARING, party=Party.MERCHANT, **amounts)
    assert (merchant.refund_minor, merchant.cancellation_fee_minor) == (2500, 0)


def test_the_docs_table_is_the_rules() -> None:
    text = (Path(__file__).parents[2] / "docs" / "orders.md").read_text()
    table = text.split("<!-- transitions:begin -->")[1].split("<!-- transitions:end -->")[0]
    documented: set[tuple[str, str, str, str]] = set()
    for line in table.strip().splitlines()[2:]:
        action, _rpc, froms, to, who = (c.strip() for c in line.strip("|").split("|"))
        for f in re.split(r",\s*", froms):
            for party in re.split(r",\s*", who):
                documented.add((action, f, to, party))
    actual = {
        (
            action.value,
            status.value,
            rule.to.value if rule.to else "(unchanged)",
            party.value,
        )
        for action, rule in RULES.items()
        for party, froms in rule.allowed.items()
        for status in froms
    }
    assert documented == actual
