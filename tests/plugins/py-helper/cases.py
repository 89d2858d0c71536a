"""A Python plugin that misuses the helper (plugins/python/src/freshet.py) in
every way a plugin author might, one way per row, chosen by the row's
``case`` column: the tests check that each fails only what it should, with
its reason, in both worlds (tests/tests/helpers.rs)."""

import freshet

AT = freshet.Instant(1, 0)


def hook(body):
    return freshet.Webhook(target="hook", body=body)


def reject(reason):
    raise freshet.Reject(reason)


def generator():
    yield freshet.Event(timestamp=AT, body={"first": True}, actions=[])
    yield freshet.Event(timestamp=AT, body={"second": True})  # goes to decide


CASES = {
    # A well-made event with an action, for contrast.
    "ok": lambda: [freshet.Event(timestamp=AT, body={"ok": True}, actions=[hook({"n": 1})])],
    # Bodies JSON cannot hold fail their row.
    "nan body": lambda: [freshet.Event(timestamp=AT, body={"n": float("nan")})],
    "set body": lambda: [freshet.Event(timestamp=AT, body={"n": {1}})],
    # A payload JSON cannot hold fails the event's actions only.
    "nan payload": lambda: [
        freshet.Event(timestamp=AT, body={}, actions=lambda: [hook({"n": float("nan")})])
    ],
    # Not what the helper's Event is.
    "not an event": lambda: [{"timestamp": AT, "body": "{}"}],
    # Refusing, in map_row and in the actions.
    "reject": lambda: reject("no thanks"),
    "reject actions": lambda: [
        freshet.Event(timestamp=AT, body={}, actions=lambda: reject("not this one"))
    ],
    "generator": generator,
}


def map_row(row: freshet.Row):
    kind = row["case"]
    if kind not in CASES:
        raise freshet.Reject(f"unknown case {kind}")
    return CASES[kind]()


def decide(event: freshet.EventIn):
    """Quotes the id it was given, so the test sees the fallback's id."""
    return [hook({"decidedFor": event.id})]


WitWorld = freshet.plugin(map_row=map_row, decide=decide)
