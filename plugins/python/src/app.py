"""The example orders plugin in Python: the same behaviour as plugins/rust.

Contract 0.2: each event carries its actions, decided from the row's own
fields (``map_row``); ``decide`` reads them back from a stored event's body.

Reads an ``orders`` row (``id``, ``customer_email``, ``status``, ``amount``,
``currency``, ``updated_at``), maps it to an XDM ExperienceEvent and decides:
confirmed → e-mail ``order-confirmation`` + webhook ``order-confirmed``;
cancelled → CRM update of the contact. Setting ``tenant`` (default
``freshet``) names the ``_{tenant}`` field group; ``decide_from`` (``row``,
the default, or ``event``) whether actions come from the row's fields or, as
``decide`` would find them, from the event's stored body (the helper's
fallback for an event given without actions).
"""

import json
import logging
import re

import freshet

COLUMNS = ("id", "customer_email", "status", "amount", "currency", "updated_at")

# Plain decimal notation only (`-12.50`; not `+1`, `.5`, `1e3`), as every
# language's orders plugin accepts exactly the same amounts.
PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?", re.ASCII)

log = logging.getLogger("orders")


def tenant() -> str:
    return freshet.setting("tenant", "freshet")


def decide_from_row() -> bool:
    """Setting ``decide_from``: ``row`` (default) or ``event``."""
    where = freshet.setting("decide_from", "row")
    if where not in ("row", "event"):
        raise freshet.Reject(f"setting `decide_from` is `{where}`; expected `row` or `event`")
    return where == "row"


def text(column: str, value) -> str:
    """A cell as text, or a rejection naming the column. Floats are refused:
    money and ids are exact."""
    if value is None:
        raise freshet.Reject(f"column `{column}` is null")
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise freshet.Reject(f"column `{column}` has type {freshet.type_name(value)}, expected text")


def amount(value: str) -> float:
    number = float(value) if PLAIN_DECIMAL.fullmatch(value) else float("nan")
    if number != number or number in (float("inf"), float("-inf")):
        raise freshet.Reject(f"amount `{value}` is not a decimal number")
    return number


def map_row(row: freshet.Row) -> list[freshet.Event]:
    # Every column is looked up before any is checked, as the other languages do.
    cells = {column: row[column] for column in COLUMNS}
    order_id, email, status, total, currency = (
        text(column, cells[column]) for column in COLUMNS[:5]
    )
    updated_at = cells["updated_at"]
    if not isinstance(updated_at, freshet.Instant):
        kind = freshet.type_name(updated_at)
        raise freshet.Reject(f"column `updated_at` has type {kind}, expected timestamp")
    if not email:
        raise freshet.Reject("customer_email is empty")
    price = amount(total)
    confirmed = status == "confirmed"
    body = {
        "eventType": "commerce.purchases" if confirmed else f"commerce.order.{status}",
        "identityMap": {
            "Email": [{"id": email, "primary": True, "authenticatedState": "authenticated"}]
        },
        "commerce": {
            "order": {"purchaseID": order_id, "priceTotal": price, "currencyCode": currency},
            "purchases": {"value": 1 if confirmed else 0},
        },
        f"_{tenant()}": {"orderId": order_id, "orderStatus": status, "amount": total},
    }
    # The `_id` is left to the host (SHA-256 of the identity and index 0);
    # the actions ask for it only when they quote it. Without actions the
    # helper calls `decide` on the event.
    if not decide_from_row():
        return [freshet.Event(timestamp=updated_at, body=body)]
    return [
        freshet.Event(
            timestamp=updated_at,
            body=body,
            actions=lambda: actions(row.event_id, order_id, email, status, total, currency),
        )
    ]


def field(body: dict, event_id: str, name: str):
    if name not in body:
        raise freshet.Reject(f"event {event_id} has no `{name}`")
    return body[name]


def decide(event: freshet.EventIn) -> list[freshet.Action]:
    try:
        body = json.loads(event.body)
        own = field(body, event.id, f"_{tenant()}")
        identities = field(body, event.id, "identityMap")
        commerce = field(body, event.id, "commerce")
        email = (identities.get("Email") or [{}])[0].get("id", "")
        order_id, status, total = own["orderId"], own["orderStatus"], own["amount"]
        currency = commerce["order"]["currencyCode"]
    except (ValueError, LookupError, TypeError, AttributeError) as error:
        # A body of another shape is the event's fault, as in the other languages.
        raise freshet.Reject(f"event {event.id}: body: {error!r}") from None
    if not all(isinstance(v, str) for v in (email, order_id, status, total, currency)):
        raise freshet.Reject(f"event {event.id}: body: a field is not text")
    return actions(lambda: event.id, order_id, email, status, total, currency)


def actions(event_id, order_id: str, email: str, status: str, total: str,
            currency: str) -> list[freshet.Action]:
    """An order's actions, from the row or from a stored event alike;
    ``event_id()`` gives the event's ``_id`` (asked only when quoted)."""
    if not email or not order_id:
        raise freshet.Reject(f"event {event_id()} has no order id or e-mail")
    if status == "confirmed":
        return [
            freshet.Email(
                target="order-confirmation",
                to=email,
                template="order-confirmation",
                variables={"orderId": order_id, "amount": total, "currency": currency},
            ),
            freshet.Webhook(
                target="order-confirmed",
                body={
                    "eventId": event_id(),
                    "orderId": order_id,
                    "email": email,
                    "amount": total,
                    "currency": currency,
                },
            ),
        ]
    if status == "cancelled":
        return [
            freshet.CrmUpdate(
                target="crm",
                object="Contact",
                external_id=email,
                fields={"last_order_id": order_id, "last_order_status": "cancelled"},
            )
        ]
    if log.isEnabledFor(logging.DEBUG):
        log.debug("event %s: no action", event_id())
    return []


WitWorld = freshet.plugin(map_row=map_row, decide=decide)
