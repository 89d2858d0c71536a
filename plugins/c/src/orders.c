/*
 * The example orders plugin in C: the same behaviour as plugins/rust.
 *
 * Reads an `orders` row (id, customer_email, status, amount, currency,
 * updated_at), maps it to an XDM ExperienceEvent and decides: confirmed →
 * e-mail `order-confirmation` + webhook `order-confirmed`; cancelled → CRM
 * update of the contact. Setting `tenant` (default `freshet`) names the
 * `_{tenant}` field group; `decide_from` (`row`, the default, or `event`)
 * whether actions come from the row's fields or, as freshet_decide would find
 * them, from the event's stored body (the helper's fallback for an event left
 * undecided).
 *
 * Contract 0.2: each event carries its actions, decided from the row's own
 * fields (map_row); freshet_decide reads them back from a stored event's body.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "freshet.h"

static const char *const COLUMNS[] = {"id", "customer_email", "status",
                                      "amount", "currency", "updated_at"};
enum { ID, EMAIL, STATUS, AMOUNT, CURRENCY, UPDATED_AT, NCOLUMNS };

/* "_" and the tenant setting: the key of the tenant's own field group. */
static void tenant_key(freshet_buf *out) {
  freshet_buf_puts(out, "_");
  if (!freshet_setting("tenant", out)) freshet_buf_puts(out, "freshet");
}

/* Setting `decide_from` into `*from_row`: `row` (default) or `event`. */
static bool decide_from_row(bool *from_row, freshet_error *error) {
  freshet_buf where = {0};
  if (!freshet_setting("decide_from", &where)) freshet_buf_puts(&where, "row");
  freshet_str value = freshet_buf_view(&where);
  bool known = freshet_str_eq(value, "row") || freshet_str_eq(value, "event");
  *from_row = freshet_str_eq(value, "row");
  if (!known) {
    freshet_buf *message = freshet_reject(error);
    freshet_buf_puts(message, "setting `decide_from` is `");
    freshet_buf_str(message, value);
    freshet_buf_puts(message, "`; expected `row` or `event`");
  }
  freshet_buf_free(&where);
  return known;
}

/* A cell as text into `out`, or a rejection naming the column. Floats are
 * refused: money and ids are exact. */
static bool text(const char *column, const freshet_value *cell, freshet_buf *out,
                 freshet_error *error) {
  switch (cell->tag) {
  case FRESHET_PLUGIN_TYPES_VALUE_TEXT:
  case FRESHET_PLUGIN_TYPES_VALUE_DECIMAL:
    freshet_buf_str(out, freshet_value_str(cell));
    return true;
  case FRESHET_PLUGIN_TYPES_VALUE_INTEGER:
    freshet_buf_int(out, cell->val.integer);
    return true;
  case FRESHET_PLUGIN_TYPES_VALUE_NULL:
    return freshet_rejectf(error, "column `%s` is null", column);
  default:
    return freshet_rejectf(error, "column `%s` has type %s, expected text", column,
                           freshet_type_name(cell));
  }
}

/* Plain decimal notation only (`-12.50`; not `+1`, `.5`, `1e3`), as every
 * language's orders plugin accepts exactly the same amounts. */
static bool plain_decimal(freshet_str s) {
  size_t i = s.len && s.ptr[0] == '-' ? 1 : 0, digits = 0;
  while (i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9') i++, digits++;
  if (!digits) return false;
  if (i == s.len) return true;
  if (s.ptr[i++] != '.') return false;
  for (digits = 0; i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9'; i++) digits++;
  return digits && i == s.len;
}

static bool amount(freshet_buf *total, double *out, freshet_error *error) {
  if (plain_decimal(freshet_buf_view(total))) {
    freshet_buf_put(total, "", 1); /* NUL-terminated for strtod, not counted */
    total->len--;
    *out = strtod(total->ptr, NULL);
    if (isfinite(*out)) return true;
  }
  freshet_buf *message = freshet_reject(error);
  freshet_buf_puts(message, "amount `");
  freshet_buf_str(message, freshet_buf_view(total));
  freshet_buf_puts(message, "` is not a decimal number");
  return false;
}

/* Appends `"key":"value"` to an object being written. */
static void member(freshet_buf *out, const char *key, freshet_str value, bool first) {
  if (!first) freshet_buf_puts(out, ",");
  freshet_json_string(out, freshet_cstr(key));
  freshet_buf_puts(out, ":");
  freshet_json_string(out, value);
}

static void free_all(freshet_buf *bufs, size_t n) {
  for (size_t i = 0; i < n; i++) freshet_buf_free(&bufs[i]);
}

/* The event's `_id` as the actions quote it: a stored event's own, or, for a
 * row's event (whose id the host derives), asked of the host when first
 * quoted. */
typedef struct {
  freshet_str known;
  const freshet_row *row;
  freshet_buf derived;
} event_id;

static freshet_str id_of(event_id *id) {
  if (!id->row) return id->known;
  if (!id->derived.len) freshet_event_id(id->row, 0, &id->derived);
  return freshet_buf_view(&id->derived);
}

/* What deciding needs of an order: read from a row, or from a stored event. */
typedef struct {
  freshet_str id, email, status, amount, currency;
} order;

/* An order's actions, from the row or from a stored event alike. */
static bool order_actions(event_id *event, order o, freshet_actions *out, freshet_error *error) {
  if (!o.email.len || !o.id.len) {
    freshet_buf *message = freshet_reject(error);
    freshet_buf_puts(message, "event ");
    freshet_buf_str(message, id_of(event));
    freshet_buf_puts(message, " has no order id or e-mail");
    return false;
  }
  if (freshet_str_eq(o.status, "confirmed")) {
    freshet_buf variables = {0}, hook = {0};
    freshet_buf_puts(&variables, "{");
    member(&variables, "orderId", o.id, true);
    member(&variables, "amount", o.amount, false);
    member(&variables, "currency", o.currency, false);
    freshet_buf_puts(&variables, "}");
    freshet_emit_email(out, "order-confirmation", o.email, "order-confirmation", &variables);
    freshet_buf_puts(&hook, "{");
    member(&hook, "eventId", id_of(event), true);
    member(&hook, "orderId", o.id, false);
    member(&hook, "email", o.email, false);
    member(&hook, "amount", o.amount, false);
    member(&hook, "currency", o.currency, false);
    freshet_buf_puts(&hook, "}");
    freshet_emit_webhook(out, "order-confirmed", &hook);
  } else if (freshet_str_eq(o.status, "cancelled")) {
    freshet_buf fields = {0};
    freshet_buf_puts(&fields, "{");
    member(&fields, "last_order_id", o.id, true);
    member(&fields, "last_order_status", freshet_cstr("cancelled"), false);
    freshet_buf_puts(&fields, "}");
    freshet_emit_crm_update(out, "crm", "Contact", o.email, &fields);
  }
  return true;
}

static bool map_fields(const freshet_row *row, freshet_buf field[5], freshet_events *out,
                       freshet_error *error) {
  const freshet_value *cells[NCOLUMNS];
  /* Every column is looked up before any is checked, as the other languages do. */
  for (int c = 0; c < NCOLUMNS; c++) {
    cells[c] = freshet_row_cell(row, COLUMNS[c]);
    if (!cells[c]) return freshet_rejectf(error, "the source has no column `%s`", COLUMNS[c]);
  }
  for (int c = ID; c <= CURRENCY; c++)
    if (!text(COLUMNS[c], cells[c], &field[c], error)) return false;
  if (cells[UPDATED_AT]->tag != FRESHET_PLUGIN_TYPES_VALUE_TIMESTAMP)
    return freshet_rejectf(error, "column `updated_at` has type %s, expected timestamp",
                           freshet_type_name(cells[UPDATED_AT]));
  if (!field[EMAIL].len) return freshet_rejectf(error, "customer_email is empty");
  double price;
  if (!amount(&field[AMOUNT], &price, error)) return false;

  freshet_str id = freshet_buf_view(&field[ID]), status = freshet_buf_view(&field[STATUS]);
  bool confirmed = freshet_str_eq(status, "confirmed");
  freshet_buf body = {0}, type = {0}, key = {0};
  freshet_buf_puts(&type, confirmed ? "commerce.purchases" : "commerce.order.");
  if (!confirmed) freshet_buf_str(&type, status);
  freshet_buf_puts(&body, "{\"eventType\":");
  freshet_json_string(&body, freshet_buf_view(&type));
  freshet_buf_puts(&body, ",\"identityMap\":{\"Email\":[{\"id\":");
  freshet_json_string(&body, freshet_buf_view(&field[EMAIL]));
  freshet_buf_puts(&body, ",\"primary\":true,\"authenticatedState\":\"authenticated\"}]}"
                          ",\"commerce\":{\"order\":{\"purchaseID\":");
  freshet_json_string(&body, id);
  freshet_buf_puts(&body, ",\"priceTotal\":");
  freshet_json_number(&body, price);
  freshet_buf_puts(&body, ",\"currencyCode\":");
  freshet_json_string(&body, freshet_buf_view(&field[CURRENCY]));
  freshet_buf_puts(&body, confirmed ? "},\"purchases\":{\"value\":1}}," : "},\"purchases\":{\"value\":0}},");
  tenant_key(&key);
  freshet_json_string(&body, freshet_buf_view(&key));
  freshet_buf_puts(&body, ":{");
  member(&body, "orderId", id, true);
  member(&body, "orderStatus", status, false);
  member(&body, "amount", freshet_buf_view(&field[AMOUNT]), false);
  freshet_buf_puts(&body, "}}");
  freshet_buf_free(&type);
  freshet_buf_free(&key);
  bool from_row;
  if (!decide_from_row(&from_row, error)) {
    freshet_buf_free(&body);
    return false;
  }

  /* The `_id` is left to the host (SHA-256 of the identity and index 0). An
   * event left undecided goes to freshet_decide. */
  freshet_emit_event(out, NULL, cells[UPDATED_AT]->val.timestamp, &body);
  if (from_row && freshet_deciding(out)) {
    freshet_actions *actions;
    freshet_error *failure;
    freshet_event_actions(out, &actions, &failure);
    event_id event = {.row = row};
    order o = {id, freshet_buf_view(&field[EMAIL]), status, freshet_buf_view(&field[AMOUNT]),
               freshet_buf_view(&field[CURRENCY])};
    order_actions(&event, o, actions, failure);
    freshet_buf_free(&event.derived);
  }
  return true;
}

bool freshet_map_row(const freshet_row *row, freshet_events *out, freshet_error *error) {
  freshet_buf field[5] = {{0}};
  bool ok = map_fields(row, field, out, error);
  free_all(field, 5);
  return ok;
}

/* A rejection saying the event lacks the member `name`. */
static bool lacks(const freshet_event *event, const char *name, freshet_error *error) {
  freshet_buf *message = freshet_reject(error);
  freshet_buf_puts(message, "event ");
  freshet_buf_str(message, event->id);
  freshet_buf_puts(message, " has no `");
  freshet_buf_puts(message, name);
  freshet_buf_puts(message, "`");
  return false;
}

/* A rejection for a body of another shape than map_row writes. */
static bool malformed(const freshet_event *event, const char *what, freshet_error *error) {
  freshet_buf *message = freshet_reject(error);
  freshet_buf_puts(message, "event ");
  freshet_buf_str(message, event->id);
  freshet_buf_printf(message, ": body: %s", what);
  return false;
}

/* The text at `path` (members, then for "[0]" the first element) under `from`. */
static bool text_at(freshet_json from, const char *const *path, freshet_buf *out) {
  freshet_json at = from;
  for (; *path; path++) {
    if (!strcmp(*path, "[0]") ? !freshet_json_element(at, 0, &at)
                              : !freshet_json_member(at, *path, &at))
      return false;
  }
  return freshet_json_text(at, out);
}

enum { ORDER_ID, ORDER_STATUS, ORDER_AMOUNT, CURRENCY_CODE, CUSTOMER, NFIELDS };

static bool decide_fields(const freshet_event *event, freshet_buf f[NFIELDS],
                          freshet_actions *out, freshet_error *error) {
  freshet_json body = freshet_json_of(event->body), top[3], own[3], emails;
  freshet_buf key = {0};
  tenant_key(&key);
  freshet_buf_put(&key, "", 1);
  /* Each object is read once for all the members wanted from it (which
   * also checks it is valid JSON): a large row's text is skipped twice (the
   * body, then the tenant's fields), not once a member. */
  const char *const top_names[3] = {key.ptr, "identityMap", "commerce"};
  bool found[3];
  bool ok = freshet_json_members(body, top_names, 3, top, found);
  if (!ok) malformed(event, "not a JSON object", error);
  for (size_t i = 0; ok && i < 3; i++)
    if (!found[i]) ok = lacks(event, top_names[i], error);
  freshet_buf_free(&key);
  if (!ok) return false;
  freshet_json identities = top[1], commerce = top[2];
  static const char *const own_names[3] = {"orderId", "orderStatus", "amount"};
  static const char *const currency[] = {"order", "currencyCode", NULL},
                           *const first_id[] = {"[0]", "id", NULL};
  bool own_found[3];
  if (!freshet_json_members(top[0], own_names, 3, own, own_found) || !own_found[0] ||
      !own_found[1] || !own_found[2] || !freshet_json_text(own[0], &f[ORDER_ID]) ||
      !freshet_json_text(own[1], &f[ORDER_STATUS]) || !freshet_json_text(own[2], &f[ORDER_AMOUNT]))
    return malformed(event, "the tenant's fields are not orderId, orderStatus and amount", error);
  if (!text_at(commerce, currency, &f[CURRENCY_CODE]))
    return malformed(event, "no commerce.order.currencyCode", error);
  /* No Email identity, or an empty list, means no e-mail address. */
  if (freshet_json_member(identities, "Email", &emails) && freshet_json_element(emails, 0, &emails) &&
      !text_at(emails, first_id + 1, &f[CUSTOMER]))
    return malformed(event, "an Email identity has no id", error);
  event_id id = {.known = event->id};
  order o = {freshet_buf_view(&f[ORDER_ID]), freshet_buf_view(&f[CUSTOMER]),
             freshet_buf_view(&f[ORDER_STATUS]), freshet_buf_view(&f[ORDER_AMOUNT]),
             freshet_buf_view(&f[CURRENCY_CODE])};
  return order_actions(&id, o, out, error);
}

bool freshet_decide(const freshet_event *event, freshet_actions *out, freshet_error *error) {
  freshet_buf fields[NFIELDS] = {{0}};
  bool ok = decide_fields(event, fields, out, error);
  free_all(fields, NFIELDS);
  return ok;
}
