"""The freshet plugin contract (``freshet:plugin@0.2.0``), the Python way.

The generated bindings (``wit_world``) speak in variants and ``Ok``/``Err``
wrappers; this module hides them. A plugin writes two plain functions and
hands them to :func:`plugin`::

    import freshet

    def map_row(row: freshet.Row) -> list[freshet.Event]: ...
    def decide(event: freshet.EventIn) -> list[freshet.Action]: ...

    WitWorld = freshet.plugin(map_row=map_row, decide=decide)

- A row crosses the boundary once: ``map_row``'s events may carry their
  actions (``Event(actions=...)``: a list, or a function called only when the
  pipeline wants actions), decided from the row in hand; an event without
  them is handed to ``decide``, which also serves events stored earlier
  (``freshet dlq replay``).
- An event may leave its ``id`` empty: the host derives it from the row's
  identity and the event's index (:meth:`Row.event_id` tells the value).

- Cells arrive as Python values: ``None``, ``bool``, ``int``, :class:`Decimal`
  (the exact decimal's text), ``float``, ``str``, :class:`Instant`,
  ``datetime.date``, :class:`Json`, ``bytes``; :func:`type_name` gives the
  contract's name for each.
- Raise :class:`Reject` to refuse one row or event (the host dead-letters it
  with your message); any other exception becomes the contract's ``internal``
  error, with its traceback in the host's log.
- Event bodies and action payloads may be dicts; they are written as JSON.
- The standard :mod:`logging` module writes to the host's log (tagged with the
  tenant and pipeline); :func:`setting` reads the pipeline's plugin settings.
"""

from __future__ import annotations

import datetime
import json
import logging
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Union

from componentize_py_types import Err, Ok
from wit_world.imports import host, types

try:  # the typed world's answers; the JSON world (plugins/python/build --world json) has none
    from wit_world.imports import decisions
except ImportError:
    decisions = None

__all__ = [
    "Action", "CrmUpdate", "Decimal", "Email", "Event", "EventIn", "Instant", "Json",
    "Reject", "Row", "Webhook", "plugin", "setting", "type_name",
]

Instant = types.Instant
"""An instant in UTC: ``seconds`` and ``nanos`` since 1970 (``seconds`` < 0 before)."""

EventIn = types.Event
"""An event as ``decide`` receives it: ``id``, ``timestamp`` and ``body`` (JSON text)."""


class Reject(Exception):
    """Raised by a plugin to refuse one input: the contract's ``reject`` error."""


class Decimal(str):
    """An exact decimal, as the text the source gave (e.g. ``"-12.50"``).

    A ``str``, so it keeps every digit; ``decimal.Decimal(value)`` for arithmetic.
    """

    __slots__ = ()


@dataclass(frozen=True)
class Json:
    """A JSON cell (VARIANT, OBJECT, ARRAY), as text; :meth:`parse` reads it."""

    text: str

    def parse(self) -> Any:
        return json.loads(self.text)


_EPOCH = datetime.date(1970, 1, 1)

# The contract's variant → (its name, the Python value).
_NATIVE: dict[type, tuple[str, Callable[[Any], Any]]] = {
    types.Value_Null: ("null", lambda v: None),
    types.Value_Boolean: ("boolean", lambda v: v.value),
    types.Value_Integer: ("integer", lambda v: v.value),
    types.Value_Decimal: ("decimal", lambda v: Decimal(v.value)),
    types.Value_Float: ("float", lambda v: v.value),
    types.Value_Text: ("text", lambda v: v.value),
    types.Value_Timestamp: ("timestamp", lambda v: v.value),
    types.Value_Date: ("date", lambda v: _EPOCH + datetime.timedelta(days=v.value)),
    types.Value_Json: ("json", lambda v: Json(v.value)),
    types.Value_Binary: ("binary", lambda v: bytes(v.value)),
}


def type_name(value: Any) -> str:
    """The contract's name for a cell's type: ``"null"``, ``"text"``, ``"float"``, ..."""
    if value is None:
        return "null"
    # bool before int: a bool is an int in Python.
    for kind, name in (
        (bool, "boolean"), (int, "integer"), (Decimal, "decimal"), (float, "float"),
        (str, "text"), (Instant, "timestamp"), (datetime.date, "date"), (Json, "json"),
        (bytes, "binary"),
    ):
        if isinstance(value, kind):
            return name
    raise TypeError(f"{type(value).__name__} is not a cell type")


class Row:
    """One source row: ``row["column"]`` is the cell as a Python value."""

    __slots__ = ("identity", "_cells", "_index", "_ids")

    def __init__(self, raw: types.Row, index: dict[str, int]):
        self.identity: str = raw.identity
        """The row's key and timestamp as text, stable across replays."""
        self._cells = raw.cells
        self._index = index
        self._ids: dict[int, str] = {}

    def __getitem__(self, column: str) -> Any:
        try:
            position = self._index[column]
        except KeyError:
            raise Reject(f"the source has no column `{column}`") from None
        cell = self._cells[position]
        return _NATIVE[type(cell)][1](cell)

    def __contains__(self, column: str) -> bool:
        return column in self._index

    def event_id(self, index: int = 0) -> str:
        """The ``_id`` the host gives this row's event number ``index`` when
        the plugin leaves it empty: for quoting it in an action's payload."""
        try:
            return self._ids[index]
        except KeyError:
            value = self._ids[index] = host.event_id(self.identity, index)
            return value


def _instant(value: list) -> Instant:
    return Instant(value[0], value[1])


# A JSON document's cell (`wit/0.2/plugin.wit`, `pipeline-plugin-json`) → the
# Python value, by the column's type.
_FROM_JSON: dict[str, Callable[[Any], Any]] = {
    "null": lambda v: None,
    "boolean": lambda v: v,
    "integer": lambda v: v if type(v) is int else int(v),  # digits as text past 2^53
    "decimal": Decimal,
    "float": lambda v: v if type(v) is float else float(v),  # 1 may come as an int; "NaN"
    "text": lambda v: v,
    "timestamp": _instant,
    "date": lambda v: _EPOCH + datetime.timedelta(days=v),
    "json": Json,
    "binary": bytes.fromhex,
}


class _JsonRow(Row):
    """A row of a JSON batch document: cells converted when read."""

    __slots__ = ("_types",)

    def __init__(self, raw: list, index: dict[str, int], column_types: list[str], first_id: str):
        self.identity = raw[0]
        self._cells = raw
        self._index = index
        # The document gives the first event's id: no host call for it.
        self._ids = {0: first_id}
        self._types = column_types

    def __getitem__(self, column: str) -> Any:
        try:
            position = self._index[column]
        except KeyError:
            raise Reject(f"the source has no column `{column}`") from None
        value = self._cells[position + 1]
        if value is None:
            return None
        kind = self._types[position]
        if kind == "mixed":  # {type: value}
            ((kind, value),) = value.items()
        return _FROM_JSON[kind](value)


# One encoder for every payload: json.dumps with options builds a new one per call.
# NaN is not JSON: it fails the row or the actions it is in.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _json(value: Union[str, dict, list]) -> str:
    """A payload as JSON text: text is passed as is, anything else is written."""
    if isinstance(value, str):
        return value
    return _encode(value)


@dataclass
class Event:
    """An XDM ExperienceEvent: ``body`` is the ``xdmEntity`` without ``_id`` and ``timestamp``.

    ``id`` may stay empty for the host to derive. ``actions``, when given, are
    the event's actions decided from the row: a list, or a function returning
    one, called only when the pipeline wants actions (raising
    :class:`Reject` there fails the actions, not the event). Without them the
    event goes to ``decide``.
    """

    timestamp: Instant
    body: Union[str, dict]
    id: str = ""
    actions: Union[None, list, Callable[[], list]] = None

    def _raw(self) -> types.Event:
        return types.Event(self.id, self.timestamp, _json(self.body))

    def _wire(self) -> dict:
        return {"id": self.id, "timestamp": [self.timestamp.seconds, self.timestamp.nanos],
                "body": self.body}

    def _raw_with(self, event_id: str) -> types.Event:
        return types.Event(event_id, self.timestamp, _json(self.body))


@dataclass
class Email:
    """Send e-mail ``template`` to ``to`` through the ``target`` the operator configured."""

    target: str
    to: str
    template: str
    variables: Union[str, dict]

    def _raw(self) -> types.Action:
        return types.Action_Email(
            types.EmailRequest(self.target, self.to, self.template, _json(self.variables))
        )

    def _wire(self) -> dict:
        return {"email": {"target": self.target, "to": self.to, "template": self.template,
                          "variables": self.variables}}


@dataclass
class Webhook:
    """POST ``body`` (JSON) to the webhook ``target``."""

    target: str
    body: Union[str, dict, list]

    def _raw(self) -> types.Action:
        return types.Action_Webhook(types.WebhookRequest(self.target, _json(self.body)))

    def _wire(self) -> dict:
        return {"webhook": {"target": self.target, "body": self.body}}


@dataclass
class CrmUpdate:
    """Upsert the ``object`` keyed by ``external_id`` with ``fields`` through ``target``."""

    target: str
    object: str
    external_id: str
    fields: Union[str, dict]

    def _raw(self) -> types.Action:
        return types.Action_CrmUpdate(
            types.CrmUpdateRequest(self.target, self.object, self.external_id, _json(self.fields))
        )

    def _wire(self) -> dict:
        return {"crm-update": {"target": self.target, "object": self.object,
                               "external-id": self.external_id, "fields": self.fields}}


Action = Union[Email, Webhook, CrmUpdate]


# Settings read during the current call: asking the host crosses the
# sandbox boundary, and a plugin asks for the same one for every row.
_settings: dict[str, str | None] = {}


def setting(name: str, default: str | None = None) -> str | None:
    """The pipeline's plugin setting ``name`` (``plugin_settings`` in its config)."""
    try:
        value = _settings[name]
    except KeyError:
        value = _settings[name] = host.get_setting(name)
    return default if value is None else value


class _HostLog(logging.Handler):
    """Forwards :mod:`logging` records to the host's log."""

    _LEVELS = (
        (logging.ERROR, host.Level.ERROR),
        (logging.WARNING, host.Level.WARN),
        (logging.INFO, host.Level.INFO),
        (logging.DEBUG, host.Level.DEBUG),
    )

    def emit(self, record: logging.LogRecord) -> None:
        level = next((l for floor, l in self._LEVELS if record.levelno >= floor), host.Level.TRACE)
        host.log(level, self.format(record))


# Every logger reaches the host, from INFO up: a record costs microseconds
# to make inside the sandbox even when the host then drops it, so DEBUG is
# opt-in (``logging.getLogger().setLevel(logging.DEBUG)``).
logging.root.handlers[:] = [_HostLog()]
logging.root.setLevel(logging.INFO)
_log = logging.getLogger("freshet")


def _error(function: Callable, error: Exception):
    """The contract's error for an exception a plugin function raised."""
    if isinstance(error, Reject):
        return Err(types.PluginError_Reject(str(error)))
    name = getattr(function, "__name__", "a plugin function")
    _log.error("%s failed:\n%s", name, traceback.format_exc())
    return Err(types.PluginError_Internal(f"{type(error).__name__}: {error}"))


def _answer(function: Callable[..., list], *arguments: Any):
    """One entry of an answer: the function's outputs, or its error."""
    try:
        return Ok([output._raw() for output in function(*arguments)])
    except Exception as error:  # noqa: BLE001 - every failure is the input's, not the batch's
        return _error(function, error)


_NO_ACTIONS = Ok([])


def _decided(map_row: Callable[[Row], list], decide: Callable[[EventIn], list],
             row: Row, deciding: bool):
    """One row's answer: its events, each with its actions, or the row's error."""
    try:
        events = list(map_row(row))  # a generator is read once
        raws = [event._raw() for event in events]
    except Exception as error:  # noqa: BLE001 - the row fails alone
        return _error(map_row, error)
    answer = []
    for index, (event, raw) in enumerate(zip(events, raws)):
        if not deciding:
            actions = _NO_ACTIONS
        elif event.actions is None:
            # `decide` sees the event as it will be stored: with its `_id`.
            if not raw.id:
                raw.id = row.event_id(index)
            actions = _answer(decide, raw)
        elif callable(event.actions):
            actions = _answer(event.actions)
        else:
            actions = _answer(list, event.actions)
        answer.append(decisions.DecidedEvent(raw, actions))
    return Ok(answer)


# The JSON answer's encoder: NaN is not JSON, so it fails the row it is in.
_encode_answer = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _wire_error(function: Callable, error: Exception) -> dict:
    """An exception as a JSON answer's error entry."""
    err = _error(function, error).value
    return {"reject" if isinstance(err, types.PluginError_Reject) else "internal": err.value}


def _wire_actions(function: Callable[..., list], *arguments: Any) -> dict:
    try:
        return {"ok": [action._wire() for action in function(*arguments)]}
    except Exception as error:  # noqa: BLE001 - the event's actions fail alone
        return _wire_error(function, error)


def _decided_json(map_row: Callable[[Row], list], decide: Callable[[EventIn], list],
                  row: Row, deciding: bool) -> dict:
    """One row's entry of a JSON answer."""
    try:
        events = list(map_row(row))
        entry = []
        for index, event in enumerate(events):
            wire = event._wire()
            if not deciding:
                pass
            elif event.actions is None:
                # `decide` sees the event as it will be stored: with its `_id`.
                if not event.id:
                    wire["id"] = row.event_id(index)
                wire["actions"] = _wire_actions(decide, event._raw_with(wire["id"]))
            elif callable(event.actions):
                wire["actions"] = _wire_actions(event.actions)
            else:
                wire["actions"] = _wire_actions(list, event.actions)
            entry.append(wire)
        return {"ok": entry}
    except Exception as error:  # noqa: BLE001 - the row fails alone
        return _wire_error(map_row, error)


def _encode_entries(map_row: Callable, entries: list[dict]) -> bytes:
    """The JSON answer: written in one call (a call of the encoder costs
    more than a small row); if that fails (a NaN, a value JSON cannot hold),
    row by row, so only the rows at fault fail."""
    try:
        return _encode_answer(entries).encode()
    except (ValueError, TypeError):
        return ("[" + ",".join(_encode_entry(map_row, entry) for entry in entries) + "]").encode()


def _encode_entry(map_row: Callable, entry: dict) -> str:
    """One row's entry: a body JSON cannot hold fails the row, a payload
    only its event's actions (as in the typed world, where each is written
    alone)."""
    try:
        return _encode_answer(entry)
    except (ValueError, TypeError):
        pass
    for event in entry["ok"]:  # error entries hold text only
        try:
            _encode_answer(event["body"])
        except (ValueError, TypeError) as error:
            return _encode_answer(_wire_error(map_row, error))
        try:
            _encode_answer(event.get("actions"))
        except (ValueError, TypeError) as error:
            event["actions"] = _wire_error(_wire_actions, error)
    return _encode_answer(entry)


def plugin(
    *, map_row: Callable[[Row], list[Event]], decide: Callable[[EventIn], list[Action]]
) -> type:
    """The component's exports, built from two per-input functions.

    Assign the result to ``WitWorld`` in the module componentize-py packs
    (``app``). Each row and event is answered on its own, so one that raises
    fails alone.
    """

    class WitWorld:
        def process(self, batch: types.RowBatch, decide_actions: bool) -> list:
            _settings.clear()
            index = {name: position for position, name in enumerate(batch.columns)}
            return [
                _decided(map_row, decide, Row(raw, index), decide_actions)
                for raw in batch.rows
            ]

        def process_json(self, batch: bytes, decide_actions: bool) -> bytes:
            """`process` of the JSON world: the batch and the answer as documents."""
            _settings.clear()
            document = json.loads(batch)
            index = {name: position for position, name in enumerate(document["columns"])}
            column_types = document["types"]
            entries = [
                _decided_json(
                    map_row, decide, _JsonRow(raw, index, column_types, first_id), decide_actions
                )
                for raw, first_id in zip(document["rows"], document["event_ids"])
            ]
            return _encode_entries(map_row, entries)

        def decide(self, events: list[types.Event]) -> list:
            _settings.clear()
            return [_answer(decide, event) for event in events]

    return WitWorld
