// A JavaScript plugin that misuses the helper (plugins/js/src/freshet.js) in
// every way a plugin author might, one way per row, chosen by the row's
// `case` column: the tests check that each fails only what it should, with
// its reason, in both worlds (tests/tests/helpers.rs).

import { Reject, event, plugin, webhook } from '../../../plugins/js/src/freshet.js';

const AT = { seconds: 1n, nanos: 0 };
const hook = (body) => webhook({ target: 'hook', body });

const CASES = {
  // A well-made event with an action, for contrast.
  ok: () => [event({ timestamp: AT, body: { ok: true }, actions: [hook({ n: 1 })] })],
  // Bodies JSON cannot hold fail their row.
  'bigint body': () => [event({ timestamp: AT, body: { n: 1n } })],
  'null body': () => [event({ timestamp: AT, body: null })],
  // A payload JSON cannot hold fails the event's actions only.
  'bigint payload': () => [event({ timestamp: AT, body: {}, actions: () => [hook({ n: 1n })] })],
  'bad payload': () => [event({ timestamp: AT, body: {}, actions: () => [hook(undefined)] })],
  // Not what event() makes.
  'not an event': () => [{ timestamp: AT, body: '{}' }],
  // Actions that are not actions.
  'actions not a list': () => [event({ timestamp: AT, body: {}, actions: 'e-mail everyone' })],
  'actions not actions': () => [event({ timestamp: AT, body: {}, actions: [{ tag: 'sms' }] })],
  // Refusing, in mapRow and in the actions.
  reject: () => { throw new Reject('no thanks'); },
  'reject actions': () => [event({ timestamp: AT, body: {}, actions: () => { throw new Reject('not this one'); } })],
  // Events as a generator; the second goes to decide (its id filled first).
  *generator() {
    yield event({ timestamp: AT, body: { first: true }, actions: [] });
    yield event({ timestamp: AT, body: { second: true } });
  },
};

function mapRow(row) {
  const kind = row.get('case');
  const make = CASES[kind];
  if (!make) throw new Reject(`unknown case ${kind}`);
  return make();
}

// `decide` quotes the id it was given, so the test sees the fallback's id.
const decideOne = ({ id }) => [hook({ decidedFor: id })];

export const { process, processJson, decide } = plugin({ mapRow, decide: decideOne });
