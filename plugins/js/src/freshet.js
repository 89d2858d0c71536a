// The freshet plugin contract (freshet:plugin@0.2.0), the JavaScript way.
//
// The bindings componentize-js generates speak in `{tag, val}` variants and
// `{tag: 'ok' | 'err'}` results; this module hides them. A plugin writes two
// plain functions and exports what `plugin` makes of them:
//
//   import { plugin } from './freshet.js';
//   export const { process, decide } = plugin({ mapRow, decide: decideOne });
//
// - A row crosses the boundary once: mapRow's events may carry their actions
//   (`event({..., actions})`: an array, or a function called only when the
//   pipeline wants actions), decided from the row in hand; an event without
//   them is handed to `decide`, which also serves events stored earlier
//   (`freshet dlq replay`).
// - An event may leave its `id` out: the host derives it from the row's
//   identity and the event's index (row.eventId(index) tells the value).
// - Cells arrive as JavaScript values: null, boolean, bigint (integer),
//   Decimal (the exact decimal's text), number (float), string, Instant,
//   Day (a DATE), Json, Uint8Array (binary); typeName() gives the contract's
//   name for each.
// - Throw Reject to refuse one row or event (the host dead-letters it with your
//   message); any other exception becomes the contract's `internal` error,
//   with its stack in the host's log.
// - Event bodies and action payloads may be objects or JSON text; objects
//   are written as JSON when the answer is (once, in the JSON world).
// - log.debug/info/warn/error write to the host's log (tagged with the tenant
//   and pipeline); setting(name, fallback) reads the pipeline's plugin settings.

import { eventId, getSetting, log as hostLog } from 'freshet:plugin/host@0.2.0';

/** Thrown by a plugin to refuse one input: the contract's `reject` error. */
export class Reject extends Error {}

/** An exact decimal, as the text the source gave (e.g. "-12.50"). */
export class Decimal {
  constructor(text) { this.text = text; }
  toString() { return this.text; }
}

/** A JSON cell (VARIANT, OBJECT, ARRAY), as text; parse() reads it. */
export class Json {
  constructor(text) { this.text = text; }
  parse() { return JSON.parse(this.text); }
}

/** An instant in UTC: `seconds` (a bigint, < 0 before 1970) and `nanos`. */
export class Instant {
  constructor({ seconds, nanos }) { this.seconds = BigInt(seconds); this.nanos = nanos; }
  /** As a Date (milliseconds: finer digits are dropped). */
  toDate() { return new Date(Number(this.seconds) * 1000 + Math.floor(this.nanos / 1e6)); }
}

/** A DATE: `days` since 1970-01-01. */
export class Day {
  constructor(days) { this.days = days; }
  /** As a Date at midnight UTC. */
  toDate() { return new Date(this.days * 86400000); }
}

const NATIVE = {
  null: () => null,
  boolean: (v) => v,
  integer: (v) => BigInt(v), // a number under QuickJS: see Row.get
  decimal: (v) => new Decimal(v),
  float: (v) => v,
  text: (v) => v,
  timestamp: (v) => new Instant(v),
  date: (v) => new Day(v),
  json: (v) => new Json(v),
  binary: (v) => (v instanceof Uint8Array ? v : Uint8Array.from(v)),
};

/** The contract's name for a cell's type: "null", "text", "float", ... */
export function typeName(value) {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean': return 'boolean';
    case 'bigint': return 'integer';
    case 'number': return 'float';
    case 'string': return 'text';
  }
  if (value instanceof Decimal) return 'decimal';
  if (value instanceof Instant) return 'timestamp';
  if (value instanceof Day) return 'date';
  if (value instanceof Json) return 'json';
  if (value instanceof Uint8Array) return 'binary';
  throw new TypeError(`${value} is not a cell type`);
}

/** One source row: row.get('column') is the cell as a JavaScript value. */
export class Row {
  constructor(raw, index) {
    /** The row's key and timestamp as text, stable across replays. */
    this.identity = raw.identity;
    this.cells = raw.cells;
    this.index = index;
  }

  get(column) {
    const position = this.index.get(column);
    if (position === undefined) throw new Reject(`the source has no column \`${column}\``);
    const cell = this.cells[position];
    // QuickJS (componentize-qjs) hands a 64-bit integer over as a double,
    // exact only to 2^53: past that the value already lost digits, and a
    // row with a wrong id is worse than a rejected one.
    if (cell.tag === 'integer' && typeof cell.val === 'number' && !Number.isSafeInteger(cell.val)) {
      throw new Reject(`column \`${column}\`: integer ${cell.val} is past 2^53, which this build's engine (QuickJS) cannot hold exactly; build with the default engine`);
    }
    return NATIVE[cell.tag](cell.val);
  }

  has(column) { return this.index.has(column); }

  /**
   * The `_id` the host gives this row's event number `index` (default 0)
   * when the plugin leaves it out: for quoting it in an action's payload.
   */
  eventId(index = 0) { return eventId(this.identity, index); }
}

/** A hex string as bytes. */
function fromHex(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.substr(i * 2, 2), 16);
  return bytes;
}

// A JSON document's cell (wit/0.2/plugin.wit, `pipeline-plugin-json`) → the
// JavaScript value, by the column's type.
const FROM_JSON = {
  null: () => null,
  boolean: (v) => v,
  integer: (v) => BigInt(v), // digits as a string past 2^53
  decimal: (v) => new Decimal(v),
  float: (v) => (typeof v === 'number' ? v : Number(v)), // "NaN", "Infinity"
  text: (v) => v,
  timestamp: (v) => new Instant({ seconds: v[0], nanos: v[1] }),
  date: (v) => new Day(v),
  json: (v) => new Json(v),
  binary: fromHex,
};

/**
 * A row of a JSON batch document: cells converted when read; the document
 * gives its first event's id (a host call would cost more than the row).
 */
class JsonRow {
  constructor(raw, index, types, firstId) {
    this.identity = raw[0];
    this.cells = raw;
    this.index = index;
    this.types = types;
    this.firstId = firstId;
  }

  has(column) { return this.index.has(column); }

  eventId(index = 0) { return index === 0 ? this.firstId : eventId(this.identity, index); }

  get(column) {
    const position = this.index.get(column);
    if (position === undefined) throw new Reject(`the source has no column \`${column}\``);
    let value = this.cells[position + 1];
    if (value === null) return null;
    let kind = this.types[position];
    if (kind === 'mixed') [[kind, value]] = Object.entries(value); // {type: value}
    return FROM_JSON[kind](value);
  }
}

/** A payload as JSON text: text passes as it is, an object is written. */
const json = (value) => (typeof value === 'string' ? value : JSON.stringify(value));

/**
 * A body or payload, kept as given until the answer is written (the JSON
 * world writes it once, inside the answer document): an object, or JSON text.
 */
function payload(name, value) {
  if (typeof value === 'string' || (typeof value === 'object' && value !== null)) return value;
  throw new TypeError(`${name} must be an object or JSON text, not ${value === null ? 'null' : typeof value}`);
}

/** What event() makes. */
class Made {
  constructor(id, timestamp, body, actions) {
    this.id = id;
    this.timestamp = timestamp;
    this.body = body;
    this.actions = actions;
  }
}

/**
 * An XDM ExperienceEvent: `body` is the xdmEntity without `_id` and
 * `timestamp` (an object, or its JSON text). `id` may be left out for the
 * host to derive. `actions`, when given, are the event's actions decided
 * from the row: an array, or a function returning one, called only when the
 * pipeline wants actions (throwing Reject there fails the actions, not the
 * event). Without them the event goes to `decide`.
 */
export const event = ({ id = '', timestamp, body, actions }) => new Made(
  id,
  // A number: QuickJS traps on a bigint for a 64-bit integer, and SpiderMonkey
  // takes either (seconds stay far inside 2^53).
  { seconds: Number(timestamp.seconds), nanos: timestamp.nanos },
  payload('an event body', body),
  actions,
);

/** Send e-mail `template` to `to` through the `target` the operator configured. */
export const email = ({ target, to, template, variables }) => ({
  tag: 'email', val: { target, to, template, variables: payload('e-mail variables', variables) },
});

/** POST `body` (JSON) to the webhook `target`. */
export const webhook = ({ target, body }) => ({
  tag: 'webhook', val: { target, body: payload('a webhook body', body) },
});

/** Upsert the `object` keyed by `externalId` with `fields` through `target`. */
export const crmUpdate = ({ target, object, externalId, fields }) => ({
  tag: 'crm-update', val: { target, object, externalId, fields: payload('CRM fields', fields) },
});

/** The typed world's actions: payloads written as JSON text (in place). */
function typedActions(result) {
  if (result.tag !== 'ok') return result;
  try {
    const list = result.val;
    for (let i = 0; i < list.length; i++) {
      const { tag, val } = list[i];
      if (tag === 'email') val.variables = json(val.variables);
      else if (tag === 'webhook') val.body = json(val.body);
      else val.fields = json(val.fields);
    }
    return result;
  } catch (error) {
    return failure(typedActions, error);
  }
}

// Settings read during the current call: asking the host crosses the
// sandbox boundary, and a plugin asks for the same one for every row.
const settings = new Map();

/** The pipeline's plugin setting `name` (`plugin_settings` in its config). */
export function setting(name, fallback) {
  let value = settings.get(name);
  if (value === undefined) {
    value = getSetting(name) ?? null;
    settings.set(name, value);
  }
  return value === null ? fallback : value;
}

/** Lines in the host's log, tagged with the tenant and pipeline. */
export const log = {
  debug: (message) => hostLog('debug', message),
  info: (message) => hostLog('info', message),
  warn: (message) => hostLog('warn', message),
  error: (message) => hostLog('error', message),
};

/** One entry of an answer: the function's outputs, or its error. */
function answer(fn, input) {
  try {
    return { tag: 'ok', val: fn(input) };
  } catch (error) {
    return failure(fn, error);
  }
}

/** The contract's error for an exception a plugin function threw. */
function failure(fn, error) {
  if (error instanceof Reject) return { tag: 'err', val: { tag: 'reject', val: error.message } };
  log.error(`${fn.name || 'a plugin function'} failed: ${error && error.stack ? error.stack : error}`);
  return { tag: 'err', val: { tag: 'internal', val: String(error) } };
}

const NO_ACTIONS = { tag: 'ok', val: [] };
const given = (actions) => actions;

/** mapRow's answer as an array of what event() made. */
function madeEvents(made) {
  const events = Array.isArray(made) ? made : Array.from(made); // any iterable; read once
  for (let index = 0; index < events.length; index++) {
    if (!(events[index] instanceof Made)) {
      throw new TypeError(`mapRow's event ${index} was not made with event()`);
    }
  }
  return events;
}

/**
 * The id an event goes out with: its own, or, when it goes to `decide`
 * (deciding, without actions of its own), the host's (`decide` sees the
 * event as it will be stored).
 */
function idOf(made, row, index, deciding) {
  if (made.id || !deciding || (made.actions !== undefined && made.actions !== null)) return made.id;
  return row.eventId(index);
}

/** An event's actions: its own, or `decide`'s for the event `id`. */
function actionsOf(decide, id, { timestamp, body, actions }) {
  if (actions === undefined || actions === null) {
    // The instant as the `decide` export gives it (a bigint).
    const stored = { id, timestamp: { seconds: BigInt(timestamp.seconds), nanos: timestamp.nanos }, body: json(body) };
    return checked(answer(decide, stored));
  }
  return checked(typeof actions === 'function' ? answer(actions) : answer(given, actions));
}

/** One row's answer: its events, each with its actions, or the row's error. */
function decided(mapRow, decide, row, deciding) {
  try {
    const events = madeEvents(mapRow(row));
    return {
      tag: 'ok',
      val: events.map((made, index) => {
        const id = idOf(made, row, index, deciding);
        const event = { id, timestamp: made.timestamp, body: json(made.body) };
        return { event, actions: deciding ? typedActions(actionsOf(decide, id, made)) : NO_ACTIONS };
      }),
    };
  } catch (error) {
    return failure(mapRow, error);
  }
}

/** An answer of actions that are an array of what email()/webhook()/crmUpdate() make. */
function checked(result) {
  if (result.tag !== 'ok') return result;
  const list = result.val;
  let ok = Array.isArray(list);
  for (let i = 0; ok && i < list.length; i++) ok = Boolean(list[i]) && ACTION_TAGS.has(list[i].tag);
  if (!ok) {
    return { tag: 'err', val: { tag: 'internal', val: 'actions must be an array of email(), webhook() or crmUpdate()' } };
  }
  return result;
}

const ACTION_TAGS = new Set(['email', 'webhook', 'crm-update']);

/** An action as the JSON answer writes it. */
function wireAction({ tag, val }) {
  if (tag === 'email') return { email: val };
  if (tag === 'webhook') return { webhook: val };
  const { target, object, externalId, fields } = val;
  return { 'crm-update': { target, object, 'external-id': externalId, fields } };
}

/** One event's actions, or their failure, as the JSON answer writes them. */
function wireActions(result) {
  return result.tag === 'ok' ? { ok: result.val.map(wireAction) } : wireError(result);
}

/**
 * One row's entry of a JSON answer, written directly (no typed answer in
 * between: in an interpreter every object and closure counts).
 */
function decidedJson(mapRow, decide, row, deciding) {
  try {
    const events = madeEvents(mapRow(row));
    const entry = new Array(events.length);
    for (let index = 0; index < events.length; index++) {
      const made = events[index];
      const id = idOf(made, row, index, deciding);
      const wire = { id, timestamp: [made.timestamp.seconds, made.timestamp.nanos], body: made.body };
      if (deciding) wire.actions = wireActions(actionsOf(decide, id, made));
      entry[index] = wire;
    }
    return { ok: entry };
  } catch (error) {
    return wireError(failure(mapRow, error));
  }
}

/**
 * The JSON answer as text. Bodies and payloads are written here, once; one
 * JSON cannot hold (a bigint, a cycle) fails only its row (a body) or its
 * event's actions (a payload), as when the typed world writes each alone.
 */
function stringifyAnswer(answer) {
  try {
    return JSON.stringify(answer);
  } catch {
    return `[${answer.map(stringifyEntry).join(',')}]`;
  }
}

function stringifyEntry(entry) {
  try {
    return JSON.stringify(entry);
  } catch (error) {
    const events = entry.ok; // error entries hold text only
    for (let i = 0; i < events.length; i++) {
      try {
        JSON.stringify(events[i].body);
      } catch (error) {
        return JSON.stringify(wireError(failure(event, error)));
      }
      try {
        JSON.stringify(events[i].actions);
      } catch (error) {
        events[i].actions = wireError(failure(typedActions, error));
      }
    }
    return JSON.stringify(entry);
  }
}

/** A failure as the JSON answer writes it. */
function wireError({ val }) {
  return { [val.tag]: val.val };
}

// The documents cross as UTF-8 bytes, which the engine's own TextDecoder and
// TextEncoder handle natively (a returned string would be encoded by
// JavaScript code in the interpreter, a byte at a time).
// QuickJS has neither: it builds the typed world only.
const decoder = typeof TextDecoder === 'function' ? new TextDecoder() : null;
const encoder = typeof TextEncoder === 'function' ? new TextEncoder() : null;

/**
 * The component's exports, built from two per-input functions. Each row and
 * event is answered on its own, so one that throws fails alone.
 */
export function plugin({ mapRow, decide }) {
  return {
    process(batch, deciding) {
      settings.clear();
      const index = new Map(batch.columns.map((name, position) => [name, position]));
      return batch.rows.map((raw) => decided(mapRow, decide, new Row(raw, index), deciding));
    },
    // `process` of the JSON world (plugins/js/build --world json).
    processJson(batch, deciding) {
      settings.clear();
      const document = JSON.parse(decoder.decode(batch));
      const index = new Map(document.columns.map((name, position) => [name, position]));
      const { rows, types, event_ids: ids } = document;
      const answer = new Array(rows.length);
      for (let r = 0; r < rows.length; r++) {
        answer[r] = decidedJson(mapRow, decide, new JsonRow(rows[r], index, types, ids[r]), deciding);
      }
      return encoder.encode(stringifyAnswer(answer));
    },
    decide(events) {
      settings.clear();
      // The instant's seconds as a bigint on either engine (QuickJS gives a number).
      return events.map((e) => typedActions(checked(
        answer(decide, { ...e, timestamp: { ...e.timestamp, seconds: BigInt(e.timestamp.seconds) } }))));
    },
  };
}
