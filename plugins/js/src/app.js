// The example orders plugin in JavaScript: the same behaviour as plugins/rust.
//
// Reads an `orders` row (id, customer_email, status, amount, currency,
// updated_at), maps it to an XDM ExperienceEvent and decides: confirmed →
// e-mail `order-confirmation` + webhook `order-confirmed`; cancelled → CRM
// update of the contact. Setting `tenant` (default `freshet`) names the
// `_{tenant}` field group; `decide_from` (`row`, the default, or `event`)
// whether actions come from the row's fields or, as `decide` would find them,
// from the event's stored body (the helper's fallback for an event given
// without actions).
//
// Contract 0.2: each event carries its actions, decided from the row's own
// fields (mapRow); `decide` reads them back from a stored event's body.

import {
  Instant, Reject, crmUpdate, email, event, plugin, setting, typeName, webhook,
} from './freshet.js';

const COLUMNS = ['id', 'customer_email', 'status', 'amount', 'currency', 'updated_at'];

// Plain decimal notation only (`-12.50`; not `+1`, `.5`, `1e3`), as every
// language's orders plugin accepts exactly the same amounts.
const PLAIN_DECIMAL = /^-?[0-9]+(\.[0-9]+)?$/;

const tenant = () => setting('tenant', 'freshet');

/** Setting `decide_from`: `row` (default) or `event`. */
function decideFromRow() {
  const where = setting('decide_from', 'row');
  if (where !== 'row' && where !== 'event') {
    throw new Reject(`setting \`decide_from\` is \`${where}\`; expected \`row\` or \`event\``);
  }
  return where === 'row';
}

/** A cell as text, or a rejection naming the column. Floats are refused: money and ids are exact. */
function text(column, value) {
  if (value === null) throw new Reject(`column \`${column}\` is null`);
  const kind = typeName(value);
  if (kind === 'text' || kind === 'decimal' || kind === 'integer') return value.toString();
  throw new Reject(`column \`${column}\` has type ${kind}, expected text`);
}

function amount(value) {
  const number = PLAIN_DECIMAL.test(value) ? Number(value) : NaN;
  if (!Number.isFinite(number)) throw new Reject(`amount \`${value}\` is not a decimal number`);
  return number;
}

function mapRow(row) {
  // Every column is looked up before any is checked, as the other languages do.
  // (Indexing, not destructuring: an interpreter runs destructuring through
  // the iterator protocol, a call per element.)
  const cells = COLUMNS.map((column) => row.get(column));
  const orderId = text('id', cells[0]);
  const customer = text('customer_email', cells[1]);
  const status = text('status', cells[2]);
  const total = text('amount', cells[3]);
  const currency = text('currency', cells[4]);
  const updatedAt = cells[5];
  if (!(updatedAt instanceof Instant)) {
    throw new Reject(`column \`updated_at\` has type ${typeName(updatedAt)}, expected timestamp`);
  }
  if (customer === '') throw new Reject('customer_email is empty');
  const price = amount(total);
  const confirmed = status === 'confirmed';
  const body = {
    eventType: confirmed ? 'commerce.purchases' : `commerce.order.${status}`,
    identityMap: { Email: [{ id: customer, primary: true, authenticatedState: 'authenticated' }] },
    commerce: {
      order: { purchaseID: orderId, priceTotal: price, currencyCode: currency },
      purchases: { value: confirmed ? 1 : 0 },
    },
    [`_${tenant()}`]: { orderId, orderStatus: status, amount: total },
  };
  // The `_id` is left to the host (SHA-256 of the identity and index 0); the
  // actions ask for it only when they quote it. Without actions the helper
  // calls `decide` on the event.
  if (!decideFromRow()) return [event({ timestamp: updatedAt, body })];
  const order = { orderId, to: customer, orderStatus: status, total, currency };
  return [event({ timestamp: updatedAt, body, actions: () => actions(() => row.eventId(), order) })];
}

function field(body, eventId, name) {
  if (!Object.hasOwn(body, name)) throw new Reject(`event ${eventId} has no \`${name}\``);
  return body[name];
}

function decideOne({ id, body: text }) {
  let to, orderId, orderStatus, total, currency;
  try {
    const body = JSON.parse(text);
    const own = field(body, id, `_${tenant()}`);
    const identities = field(body, id, 'identityMap');
    const commerce = field(body, id, 'commerce');
    to = (identities.Email ?? [])[0]?.id ?? '';
    ({ orderId, orderStatus, amount: total } = own);
    currency = commerce.order.currencyCode;
  } catch (error) {
    if (error instanceof Reject) throw error;
    // A body of another shape is the event's fault, as in the other languages.
    throw new Reject(`event ${id}: body: ${error}`);
  }
  if (![to, orderId, orderStatus, total, currency].every((v) => typeof v === 'string')) {
    throw new Reject(`event ${id}: body: a field is not text`);
  }
  return actions(() => id, { orderId, to, orderStatus, total, currency });
}

/**
 * An order's actions, from the row or from a stored event alike; `eventId()`
 * gives the event's `_id` (asked only when quoted).
 */
function actions(eventId, { orderId, to, orderStatus, total, currency }) {
  if (!to || !orderId) throw new Reject(`event ${eventId()} has no order id or e-mail`);
  switch (orderStatus) {
    case 'confirmed':
      return [
        email({
          target: 'order-confirmation',
          to,
          template: 'order-confirmation',
          variables: { orderId, amount: total, currency },
        }),
        webhook({
          target: 'order-confirmed',
          body: { eventId: eventId(), orderId, email: to, amount: total, currency },
        }),
      ];
    case 'cancelled':
      return [
        crmUpdate({
          target: 'crm',
          object: 'Contact',
          externalId: to,
          fields: { last_order_id: orderId, last_order_status: 'cancelled' },
        }),
      ];
    default:
      return [];
  }
}

export const { process, processJson, decide } = plugin({ mapRow, decide: decideOne });
