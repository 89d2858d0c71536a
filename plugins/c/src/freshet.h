/*
 * The freshet plugin contract (freshet:plugin@0.2.0), the C way.
 *
 * The bindings `wit-bindgen c` generates (pipeline_plugin.h) speak in tagged
 * unions, ownership rules and list structs; this helper hides them. A plugin
 * implements two functions, one input at a time:
 *
 *     bool freshet_map_row(const freshet_row *row, freshet_events *out, freshet_error *error);
 *     bool freshet_decide(const freshet_event *event, freshet_actions *out, freshet_error *error);
 *
 * Each returns true with its outputs pushed onto `out`, or false after
 * filling `error` with freshet_reject() (bad input: the row is dead-lettered
 * with the message) or freshet_internal() (the plugin's own failure). One
 * input failing never fails the others.
 *
 * A row crosses the boundary once: map_row may decide each event's actions
 * from the row in hand (freshet_event_actions, when freshet_deciding); an
 * event it leaves undecided is handed to freshet_decide, which also serves
 * events stored earlier (`freshet dlq replay`). An event may leave its id
 * empty: the host derives it (freshet_event_id tells the value).
 *
 * Strings are length-delimited (freshet_str), never NUL-terminated: a cell may
 * hold NUL bytes. Text is built in a freshet_buf, which also writes JSON.
 * Memory: everything handed to freshet_* is owned by the helper; the
 * arguments are freed after each call and the outputs after the host copies
 * them, so a plugin frees only what it malloc'd itself.
 */
#ifndef FRESHET_H
#define FRESHET_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pipeline_plugin.h"

/* A string view: bytes and length (UTF-8, may contain NUL). */
typedef struct {
  const char *ptr;
  size_t len;
} freshet_str;

/* A view of a NUL-terminated literal. */
freshet_str freshet_cstr(const char *s);
bool freshet_str_eq(freshet_str a, const char *literal);

/* A growable byte buffer. Zero-initialise it: `freshet_buf b = {0};`. */
typedef struct {
  char *ptr;
  size_t len;
  size_t cap;
} freshet_buf;

void freshet_buf_put(freshet_buf *b, const char *bytes, size_t len);
void freshet_buf_puts(freshet_buf *b, const char *s);
void freshet_buf_str(freshet_buf *b, freshet_str s);
void freshet_buf_printf(freshet_buf *b, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* An integer in decimal, without printf's machinery. */
void freshet_buf_int(freshet_buf *b, int64_t n);
freshet_str freshet_buf_view(const freshet_buf *b);
void freshet_buf_free(freshet_buf *b);

/* JSON writing: a string literal (quoted, escaped) and a finite number
 * (shortest text that reads back as the same double). */
void freshet_json_string(freshet_buf *b, freshet_str s);
void freshet_json_number(freshet_buf *b, double n);

/* JSON reading, enough to pick fields out of an event body: a view of one
 * JSON value. Lookups return false when the value is not of the right shape
 * or not valid JSON. */
typedef struct {
  const char *ptr;
  size_t len;
} freshet_json;

freshet_json freshet_json_of(freshet_str text);
/* The member `key` of an object (the last one, if repeated). */
bool freshet_json_member(freshet_json object, const char *key, freshet_json *out);
/* Several members in one pass over the object: outs[i] is the member
 * keys[i] (the last one, if repeated) where found[i]. False if the object
 * is not valid JSON (then nothing is found): a caller wanting three members
 * of a large body reads it once, not three times. */
bool freshet_json_members(freshet_json object, const char *const *keys, size_t n,
                          freshet_json *outs, bool *found);
/* Element `index` of an array. */
bool freshet_json_element(freshet_json array, size_t index, freshet_json *out);
/* A string value, unescaped into `out` (appended). */
bool freshet_json_text(freshet_json value, freshet_buf *out);

/* Cells, typed as the source column is. */
typedef freshet_plugin_types_value_t freshet_value;
typedef freshet_plugin_types_instant_t freshet_instant;

/* The contract's name for a cell's type: "null", "text", "float", ... */
const char *freshet_type_name(const freshet_value *cell);
/* A text, decimal or json cell as a string view. */
freshet_str freshet_value_str(const freshet_value *cell);

/* One source row. */
typedef struct freshet_row freshet_row;
/* The row's key and timestamp as text, stable across replays. */
freshet_str freshet_row_identity(const freshet_row *row);
/* The cell of `column`, or NULL when the source has no such column. */
const freshet_value *freshet_row_cell(const freshet_row *row, const char *column);

/* An event as decide receives it. */
typedef struct {
  freshet_str id;
  freshet_instant timestamp;
  freshet_str body;
} freshet_event;

/* What a call answers. */
typedef struct freshet_events freshet_events;
typedef struct freshet_actions freshet_actions;
typedef struct freshet_error freshet_error;

/* Adds an event; `body` is the xdmEntity without `_id` and `timestamp`. The
 * buffers are taken (left empty). `id` may be NULL or empty: the host then
 * derives the event's `_id` from the row's identity and the event's index. */
void freshet_emit_event(freshet_events *out, freshet_buf *id, freshet_instant timestamp,
                        freshet_buf *body);
/* Whether this call wants actions: false for an events-only pipeline, which
 * drops them; deciding then is wasted work. */
bool freshet_deciding(const freshet_events *out);
/* The actions of the event added last, decided here from the row instead of
 * by freshet_decide: push them onto `*actions`, or fail them through
 * `*error` (freshet_reject(*error)): the event is still delivered, its
 * actions are dead-lettered. Call only when freshet_deciding(). The pointers
 * stay valid until the next freshet_emit_event: decide an event before
 * adding the next. */
void freshet_event_actions(freshet_events *out, freshet_actions **actions, freshet_error **error);
/* Appends to `out` the `_id` the host gives the row's event number `index`
 * when its id is left empty (SHA-256 of `{identity}#{index}`, hex): for
 * quoting it in an action's payload. */
void freshet_event_id(const freshet_row *row, uint32_t index, freshet_buf *out);
/* Adds an action; JSON payloads are taken from their buffers. */
void freshet_emit_email(freshet_actions *out, const char *target, freshet_str to,
                        const char *template_name, freshet_buf *variables);
void freshet_emit_webhook(freshet_actions *out, const char *target, freshet_buf *body);
void freshet_emit_crm_update(freshet_actions *out, const char *target, const char *object,
                             freshet_str external_id, freshet_buf *fields);

/* Rejects the input (bad data; retrying will not help) or reports the
 * plugin's own failure; returns the message buffer to write into. */
freshet_buf *freshet_reject(freshet_error *error);
freshet_buf *freshet_internal(freshet_error *error);
/* The same with a printf format, returning false for `return freshet_rejectf(...)`.
 * %s stops at a NUL byte: use freshet_reject() and freshet_buf_str() for cells. */
bool freshet_rejectf(freshet_error *error, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* The pipeline's plugin setting `name` appended to `out`; false if unset. */
bool freshet_setting(const char *name, freshet_buf *out);

/* A line in the host's log, tagged with the tenant and pipeline. */
typedef enum {
  FRESHET_TRACE = FRESHET_PLUGIN_HOST_LEVEL_TRACE,
  FRESHET_DEBUG = FRESHET_PLUGIN_HOST_LEVEL_DEBUG,
  FRESHET_INFO = FRESHET_PLUGIN_HOST_LEVEL_INFO,
  FRESHET_WARN = FRESHET_PLUGIN_HOST_LEVEL_WARN,
  FRESHET_ERROR = FRESHET_PLUGIN_HOST_LEVEL_ERROR,
} freshet_level;
void freshet_log(freshet_level level, freshet_str message);

/* What the plugin implements. */
bool freshet_map_row(const freshet_row *row, freshet_events *out, freshet_error *error);
bool freshet_decide(const freshet_event *event, freshet_actions *out, freshet_error *error);

#endif
