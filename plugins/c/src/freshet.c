/*
 * The helper behind freshet.h: turns the generated bindings' batch calls into
 * one freshet_map_row call per row and one decision per event (the row's own,
 * or freshet_decide's), owns every allocation
 * that crosses the boundary, and writes and reads the little JSON a plugin
 * needs.
 */
#include "freshet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Out of memory inside a sandboxed call: trap; the host reports the call as
 * failed and discards the instance. */
static void *grow(void *ptr, size_t size) {
  void *out = realloc(ptr, size ? size : 1);
  if (!out) abort();
  return out;
}

freshet_str freshet_cstr(const char *s) { return (freshet_str){s, strlen(s)}; }

bool freshet_str_eq(freshet_str a, const char *literal) {
  size_t len = strlen(literal);
  return a.len == len && memcmp(a.ptr, literal, len) == 0;
}

/* --- buffers ------------------------------------------------------------ */

void freshet_buf_put(freshet_buf *b, const char *bytes, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < b->len + len) cap *= 2;
    b->ptr = grow(b->ptr, cap);
    b->cap = cap;
  }
  if (len) memcpy(b->ptr + b->len, bytes, len);
  b->len += len;
}

void freshet_buf_puts(freshet_buf *b, const char *s) { freshet_buf_put(b, s, strlen(s)); }

void freshet_buf_str(freshet_buf *b, freshet_str s) { freshet_buf_put(b, s.ptr, s.len); }

static void buf_vprintf(freshet_buf *b, const char *format, va_list args) {
  va_list again;
  va_copy(again, args);
  int len = vsnprintf(NULL, 0, format, args);
  if (len > 0) {
    if (b->len + (size_t)len + 1 > b->cap) {
      b->cap = b->len + (size_t)len + 1;
      b->ptr = grow(b->ptr, b->cap);
    }
    vsnprintf(b->ptr + b->len, (size_t)len + 1, format, again);
    b->len += (size_t)len;
  }
  va_end(again);
}

void freshet_buf_printf(freshet_buf *b, const char *format, ...) {
  va_list args;
  va_start(args, format);
  buf_vprintf(b, format, args);
  va_end(args);
}

void freshet_buf_int(freshet_buf *b, int64_t n) {
  char digits[20];
  size_t i = sizeof digits;
  /* Negated as unsigned, so INT64_MIN has its digits too. */
  uint64_t u = n < 0 ? 0 - (uint64_t)n : (uint64_t)n;
  do digits[--i] = (char)('0' + u % 10); while (u /= 10);
  if (n < 0) freshet_buf_put(b, "-", 1);
  freshet_buf_put(b, digits + i, sizeof digits - i);
}

freshet_str freshet_buf_view(const freshet_buf *b) { return (freshet_str){b->ptr, b->len}; }

void freshet_buf_free(freshet_buf *b) {
  free(b->ptr);
  *b = (freshet_buf){0};
}

/* A buffer's bytes as a string the host takes over (the bindings free it
 * after the call returns); the buffer is left empty. */
static pipeline_plugin_string_t take(freshet_buf *b) {
  pipeline_plugin_string_t s = {(uint8_t *)b->ptr, b->len};
  if (!b->len) {
    free(b->ptr);
    s.ptr = NULL;
  }
  *b = (freshet_buf){0};
  return s;
}

static pipeline_plugin_string_t take_copy(freshet_str s) {
  freshet_buf b = {0};
  freshet_buf_str(&b, s);
  return take(&b);
}

/* Whether none of the eight bytes of w is a quote, a backslash or a control
 * character: the bytes a JSON string's reader or writer must look at. Exact
 * (the classic "has a zero byte" and "has a byte less than n" tests), and
 * about a dozen instructions for eight bytes instead of a dozen for one. */
static inline bool plain_word(uint64_t w) {
  const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
  uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
  uint64_t found = ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) |
                   ((w - ones * 0x20) & ~w);
  return !(found & highs);
}

/* Past the plain bytes (see plain_word) from p, eight at a time while eight
 * remain. Callers then look at BYTEWISE bytes one by one before trying
 * words again, so text dense with escapes pays the word test once per
 * BYTEWISE bytes, not at every escape. */
#define BYTEWISE 32
static inline const char *skip_plain_words(const char *p, const char *end) {
  uint64_t w;
  while (end - p >= 8 && (memcpy(&w, p, 8), plain_word(w))) p += 8;
  return p;
}

/* --- JSON writing ------------------------------------------------------- */

/* How JSON writes the byte c inside a string, or NULL if as itself. */
static const char *escape_of(unsigned char c, char unicode[7]) {
  static const char hex[] = "0123456789abcdef";
  switch (c) {
  case '"': return "\\\"";
  case '\\': return "\\\\";
  case '\n': return "\\n";
  case '\r': return "\\r";
  case '\t': return "\\t";
  default:
    if (c >= 0x20) return NULL;
    memcpy(unicode, "\\u00", 4);
    unicode[4] = hex[c >> 4];
    unicode[5] = hex[c & 0xf];
    unicode[6] = 0;
    return unicode;
  }
}

void freshet_json_string(freshet_buf *b, freshet_str s) {
  freshet_buf_put(b, "\"", 1);
  size_t plain = 0; /* start of the run of bytes that need no escape */
  for (size_t i = 0; i < s.len;) {
    i = (size_t)(skip_plain_words(s.ptr + i, s.ptr + s.len) - s.ptr);
    for (size_t stop = s.len - i > BYTEWISE ? i + BYTEWISE : s.len; i < stop; i++) {
      char unicode[7];
      const char *escape = escape_of((unsigned char)s.ptr[i], unicode);
      if (!escape) continue;
      freshet_buf_put(b, s.ptr + plain, i - plain);
      freshet_buf_puts(b, escape);
      plain = i + 1;
    }
  }
  freshet_buf_put(b, s.ptr + plain, s.len - plain);
  freshet_buf_put(b, "\"", 1);
}

void freshet_json_number(freshet_buf *b, double n) {
  /* The fewest digits that read back as the same double, as JSON writers in
   * other languages do. A double whose shortest form has at most 15 digits
   * prints as exactly that form at precision 15 (%g drops the trailing
   * zeros); the nearest 16-digit form round-trips whenever any does; 17
   * always does. Each try is a printf of a long double in software, so
   * start where most numbers end. */
  char text[32];
  for (int precision = 15; precision <= 17; precision++) {
    snprintf(text, sizeof text, "%.*g", precision, n);
    if (strtod(text, NULL) == n) break;
  }
  freshet_buf_puts(b, text);
}

/* --- JSON reading ------------------------------------------------------- */

/* Deeper nesting than this is refused rather than risking the guest stack. */
#define JSON_MAX_DEPTH 128

static const char *skip_space(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* Past the string starting at p (a quote), or NULL. */
static const char *skip_string(const char *p, const char *end) {
  if (p >= end || *p != '"') return NULL;
  for (p++; p < end;) {
    p = skip_plain_words(p, end);
    for (const char *stop = end - p > BYTEWISE ? p + BYTEWISE : end; p < stop; p++) {
      if (*p == '"') return p + 1;
      if ((unsigned char)*p < 0x20) return NULL;
      if (*p == '\\' && ++p == end) return NULL;
    }
  }
  return NULL;
}

static bool is_number_char(char c) {
  return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* Past the value starting at p, or NULL if it is not valid JSON. */
static const char *skip_value(const char *p, const char *end, int depth) {
  if (p >= end || depth > JSON_MAX_DEPTH) return NULL;
  switch (*p) {
  case '"':
    return skip_string(p, end);
  case '{':
  case '[': {
    char close = *p == '{' ? '}' : ']';
    p = skip_space(p + 1, end);
    if (p < end && *p == close) return p + 1;
    for (;;) {
      if (close == '}') {
        p = skip_string(p, end);
        if (!p) return NULL;
        p = skip_space(p, end);
        if (p >= end || *p != ':') return NULL;
        p = skip_space(p + 1, end);
      }
      p = skip_value(p, end, depth + 1);
      if (!p) return NULL;
      p = skip_space(p, end);
      if (p < end && *p == close) return p + 1;
      if (p >= end || *p != ',') return NULL;
      p = skip_space(p + 1, end);
    }
  }
  case 't':
    return (size_t)(end - p) >= 4 && !memcmp(p, "true", 4) ? p + 4 : NULL;
  case 'f':
    return (size_t)(end - p) >= 5 && !memcmp(p, "false", 5) ? p + 5 : NULL;
  case 'n':
    return (size_t)(end - p) >= 4 && !memcmp(p, "null", 4) ? p + 4 : NULL;
  default: {
    const char *start = p;
    while (p < end && is_number_char(*p)) p++;
    return p > start ? p : NULL;
  }
  }
}

freshet_json freshet_json_of(freshet_str text) { return (freshet_json){text.ptr, text.len}; }

static void put_utf8(freshet_buf *out, uint32_t c) {
  char bytes[4];
  size_t n;
  if (c < 0x80) bytes[0] = (char)c, n = 1;
  else if (c < 0x800) bytes[0] = (char)(0xc0 | c >> 6), bytes[1] = (char)(0x80 | (c & 0x3f)), n = 2;
  else if (c < 0x10000) {
    bytes[0] = (char)(0xe0 | c >> 12), bytes[1] = (char)(0x80 | ((c >> 6) & 0x3f));
    bytes[2] = (char)(0x80 | (c & 0x3f)), n = 3;
  } else {
    bytes[0] = (char)(0xf0 | c >> 18), bytes[1] = (char)(0x80 | ((c >> 12) & 0x3f));
    bytes[2] = (char)(0x80 | ((c >> 6) & 0x3f)), bytes[3] = (char)(0x80 | (c & 0x3f)), n = 4;
  }
  freshet_buf_put(out, bytes, n);
}

static bool hex4(const char *p, const char *end, uint32_t *out) {
  if (end - p < 4) return false;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
    else return false;
  }
  *out = v;
  return true;
}

/* Unescapes the string at p into out; false if it is not a valid string. */
static bool read_string(const char *p, const char *end, freshet_buf *out) {
  const char *close = skip_string(p, end);
  if (!close) return false;
  const char *run = p + 1; /* the bytes not yet copied, which need no unescaping */
  const char *words = run;  /* where words may be tried again */
  for (p++, end = close - 1; p < end;) {
    if (p >= words) {
      p = skip_plain_words(p, end);
      words = p + BYTEWISE;
    }
    const char *stop = end - p > BYTEWISE ? p + BYTEWISE : end;
    while (p < stop && *p != '\\') p++;
    if (p == stop) continue;
    freshet_buf_put(out, run, (size_t)(p - run));
    char c = *++p, simple = 0;
    switch (c) {
    case '"': case '\\': case '/': simple = c; break;
    case 'b': simple = '\b'; break;
    case 'f': simple = '\f'; break;
    case 'n': simple = '\n'; break;
    case 'r': simple = '\r'; break;
    case 't': simple = '\t'; break;
    case 'u': {
      uint32_t unit, low;
      if (!hex4(p + 1, end, &unit)) return false;
      p += 4;
      if (unit >= 0xd800 && unit < 0xdc00) {
        if (end - p < 7 || p[1] != '\\' || p[2] != 'u' || !hex4(p + 3, end, &low) ||
            low < 0xdc00 || low >= 0xe000)
          return false;
        unit = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
        p += 6;
      } else if (unit >= 0xdc00 && unit < 0xe000) {
        return false;
      }
      put_utf8(out, unit);
      run = ++p;
      continue;
    }
    default:
      return false;
    }
    freshet_buf_put(out, &simple, 1);
    run = ++p;
  }
  freshet_buf_put(out, run, (size_t)(end - run));
  return true;
}

bool freshet_json_members(freshet_json object, const char *const *keys, size_t n,
                          freshet_json *outs, bool *found) {
  for (size_t i = 0; i < n; i++) found[i] = false;
  const char *end = object.ptr + object.len, *p = skip_space(object.ptr, end);
  if (p >= end || *p != '{') return false;
  p = skip_space(p + 1, end);
  if (p < end && *p == '}') return skip_space(p + 1, end) == end;
  freshet_buf name = {0};
  bool ok = false;
  while (p) {
    const char *close = skip_string(p, end);
    if (!close) break;
    /* Most names have no escapes: compare their bytes where they stand. */
    freshet_str raw = {p + 1, (size_t)(close - p - 2)};
    bool escaped = memchr(raw.ptr, '\\', raw.len) != NULL;
    name.len = 0;
    if (escaped && !read_string(p, end, &name)) break;
    p = skip_space(close, end);
    if (p >= end || *p != ':') break;
    const char *value = skip_space(p + 1, end);
    p = skip_value(value, end, 1);
    if (!p) break;
    freshet_str member = escaped ? freshet_buf_view(&name) : raw;
    for (size_t i = 0; i < n; i++) {
      if (freshet_str_eq(member, keys[i])) {
        outs[i] = (freshet_json){value, (size_t)(p - value)};
        found[i] = true;
      }
    }
    p = skip_space(p, end);
    if (p < end && *p == '}') {
      ok = skip_space(p + 1, end) == end;
      break;
    }
    if (p >= end || *p != ',') break;
    p = skip_space(p + 1, end);
  }
  freshet_buf_free(&name);
  return ok;
}

bool freshet_json_member(freshet_json object, const char *key, freshet_json *out) {
  bool found;
  return freshet_json_members(object, &key, 1, out, &found) && found;
}

bool freshet_json_element(freshet_json array, size_t index, freshet_json *out) {
  const char *end = array.ptr + array.len, *p = skip_space(array.ptr, end);
  if (p >= end || *p != '[') return false;
  p = skip_space(p + 1, end);
  for (size_t i = 0; p < end && *p != ']'; i++) {
    const char *value = p;
    p = skip_value(value, end, 1);
    if (!p) return false;
    if (i == index) {
      *out = (freshet_json){value, (size_t)(p - value)};
      return true;
    }
    p = skip_space(p, end);
    if (p < end && *p == ',') p = skip_space(p + 1, end);
    else break;
  }
  return false;
}

bool freshet_json_text(freshet_json value, freshet_buf *out) {
  const char *end = value.ptr + value.len, *p = skip_space(value.ptr, end);
  return read_string(p, end, out);
}

/* --- cells and rows ----------------------------------------------------- */

const char *freshet_type_name(const freshet_value *cell) {
  static const char *const names[] = {"null", "boolean", "integer", "decimal", "float",
                                      "text", "timestamp", "date",    "json",  "binary"};
  return cell->tag < sizeof names / sizeof *names ? names[cell->tag] : "unknown";
}

freshet_str freshet_value_str(const freshet_value *cell) {
  const pipeline_plugin_string_t *s;
  switch (cell->tag) {
  case FRESHET_PLUGIN_TYPES_VALUE_TEXT: s = &cell->val.text; break;
  case FRESHET_PLUGIN_TYPES_VALUE_DECIMAL: s = &cell->val.decimal; break;
  case FRESHET_PLUGIN_TYPES_VALUE_JSON: s = &cell->val.json; break;
  default: return (freshet_str){"", 0};
  }
  return (freshet_str){(const char *)s->ptr, s->len};
}

struct freshet_row {
  const pipeline_plugin_list_string_t *columns;
  const freshet_plugin_types_row_t *raw;
};

freshet_str freshet_row_identity(const freshet_row *row) {
  return (freshet_str){(const char *)row->raw->identity.ptr, row->raw->identity.len};
}

const freshet_value *freshet_row_cell(const freshet_row *row, const char *column) {
  size_t len = strlen(column);
  for (size_t i = 0; i < row->columns->len && i < row->raw->cells.len; i++) {
    const pipeline_plugin_string_t *name = &row->columns->ptr[i];
    if (name->len == len && memcmp(name->ptr, column, len) == 0) return &row->raw->cells.ptr[i];
  }
  return NULL;
}

/* --- answers ------------------------------------------------------------ */

struct freshet_actions {
  pipeline_plugin_action_t *ptr;
  size_t len, cap;
};

struct freshet_error {
  bool set;
  uint8_t tag;
  freshet_buf message;
};

/* An event's actions while its row is being mapped: given by map_row, or not
 * (then freshet_decide decides them). */
typedef struct {
  bool given;
  freshet_actions actions;
  freshet_error error;
} pending_actions;

struct freshet_events {
  pipeline_plugin_decided_event_t *ptr;
  pending_actions *pending; /* one per event, same capacity */
  size_t len, cap;
  bool deciding;
};

#define PUSH(list, item)                                                     \
  do {                                                                       \
    if ((list)->len == (list)->cap) {                                        \
      (list)->cap = (list)->cap ? (list)->cap * 2 : 2;                       \
      (list)->ptr = grow((list)->ptr, (list)->cap * sizeof *(list)->ptr);    \
    }                                                                        \
    (list)->ptr[(list)->len++] = (item);                                     \
  } while (0)

void freshet_emit_event(freshet_events *out, freshet_buf *id, freshet_instant timestamp,
                        freshet_buf *body) {
  freshet_buf none = {0};
  pipeline_plugin_decided_event_t decided = {.event = {take(id ? id : &none), timestamp, take(body)}};
  if (out->len == out->cap) {
    out->pending = grow(out->pending, (out->cap ? out->cap * 2 : 2) * sizeof *out->pending);
  }
  PUSH(out, decided);
  out->pending[out->len - 1] = (pending_actions){0};
}

bool freshet_deciding(const freshet_events *out) { return out->deciding; }

void freshet_event_actions(freshet_events *out, freshet_actions **actions, freshet_error **error) {
  if (!out->len) abort(); /* a plugin bug: no event to decide for */
  pending_actions *last = &out->pending[out->len - 1];
  last->given = true;
  *actions = &last->actions;
  *error = &last->error;
}

void freshet_event_id(const freshet_row *row, uint32_t index, freshet_buf *out) {
  pipeline_plugin_string_t id;
  /* The bindings take a non-const pointer; the host only reads it. */
  freshet_plugin_host_event_id((pipeline_plugin_string_t *)&row->raw->identity, index, &id);
  freshet_buf_put(out, (const char *)id.ptr, id.len);
  pipeline_plugin_string_free(&id);
}

static pipeline_plugin_string_t literal(const char *s) { return take_copy(freshet_cstr(s)); }

void freshet_emit_email(freshet_actions *out, const char *target, freshet_str to,
                        const char *template_name, freshet_buf *variables) {
  pipeline_plugin_action_t action = {.tag = FRESHET_PLUGIN_TYPES_ACTION_EMAIL};
  action.val.email = (freshet_plugin_types_email_request_t){
      literal(target), take_copy(to), literal(template_name), take(variables)};
  PUSH(out, action);
}

void freshet_emit_webhook(freshet_actions *out, const char *target, freshet_buf *body) {
  pipeline_plugin_action_t action = {.tag = FRESHET_PLUGIN_TYPES_ACTION_WEBHOOK};
  action.val.webhook = (freshet_plugin_types_webhook_request_t){literal(target), take(body)};
  PUSH(out, action);
}

void freshet_emit_crm_update(freshet_actions *out, const char *target, const char *object,
                             freshet_str external_id, freshet_buf *fields) {
  pipeline_plugin_action_t action = {.tag = FRESHET_PLUGIN_TYPES_ACTION_CRM_UPDATE};
  action.val.crm_update = (freshet_plugin_types_crm_update_request_t){
      literal(target), literal(object), take_copy(external_id), take(fields)};
  PUSH(out, action);
}

static freshet_buf *fail(freshet_error *error, uint8_t tag) {
  error->set = true;
  error->tag = tag;
  error->message.len = 0;
  return &error->message;
}

freshet_buf *freshet_reject(freshet_error *error) {
  return fail(error, FRESHET_PLUGIN_TYPES_PLUGIN_ERROR_REJECT);
}

freshet_buf *freshet_internal(freshet_error *error) {
  return fail(error, FRESHET_PLUGIN_TYPES_PLUGIN_ERROR_INTERNAL);
}

bool freshet_rejectf(freshet_error *error, const char *format, ...) {
  va_list args;
  va_start(args, format);
  buf_vprintf(freshet_reject(error), format, args);
  va_end(args);
  return false;
}

/* The contract's error for a failed input; a plugin that failed without
 * saying why is reported as an internal error. */
static pipeline_plugin_plugin_error_t into_error(freshet_error *error) {
  if (!error->set) freshet_buf_puts(freshet_internal(error), "the plugin failed without a message");
  pipeline_plugin_plugin_error_t out = {.tag = error->tag};
  out.val.reject = take(&error->message); /* both variants hold a string */
  return out;
}

bool freshet_setting(const char *name, freshet_buf *out) {
  pipeline_plugin_string_t key = {(uint8_t *)name, strlen(name)}, value;
  if (!freshet_plugin_host_get_setting(&key, &value)) return false;
  freshet_buf_put(out, (const char *)value.ptr, value.len);
  pipeline_plugin_string_free(&value);
  return true;
}

void freshet_log(freshet_level level, freshet_str message) {
  pipeline_plugin_string_t text = {(uint8_t *)message.ptr, message.len};
  freshet_plugin_host_log((freshet_plugin_host_level_t)level, &text);
}

/* --- the exports -------------------------------------------------------- */

/* Settles one entry of an answer (`entry->is_err`, `->val.ok`, `->val.err`)
 * with a decision's outcome: its actions, or, when it failed, its error (the
 * actions it had pushed are freed). A macro: the bindings declare a distinct
 * result type for each place a result of actions appears. */
#define SETTLE(entry, failed, actions, error)                                \
  do {                                                                       \
    if (failed) {                                                            \
      pipeline_plugin_list_action_t partial = {(actions)->ptr, (actions)->len}; \
      pipeline_plugin_list_action_free(&partial);                            \
      (entry)->is_err = true;                                                \
      (entry)->val.err = into_error(error);                                  \
    } else {                                                                 \
      (entry)->is_err = false;                                               \
      (entry)->val.ok.ptr = (actions)->ptr;                                  \
      (entry)->val.ok.len = (actions)->len;                                  \
    }                                                                        \
    freshet_buf_free(&(error)->message);                                     \
  } while (0)

/* freshet_decide on an event as the bindings hold it. */
static bool decide_raw(const pipeline_plugin_event_t *raw, freshet_actions *actions,
                       freshet_error *error) {
  freshet_event event = {{(const char *)raw->id.ptr, raw->id.len},
                         raw->timestamp,
                         {(const char *)raw->body.ptr, raw->body.len}};
  return freshet_decide(&event, actions, error);
}

/* Decides an event the row left undecided, through freshet_decide; the
 * event keeps its place in the answer. */
static void decide_event(const freshet_row *row, size_t index, pipeline_plugin_decided_event_t *out) {
  pipeline_plugin_event_t *raw = &out->event;
  if (!raw->id.len) { /* decide sees the event as it will be stored: with its `_id` */
    freshet_buf id = {0};
    freshet_event_id(row, (uint32_t)index, &id);
    raw->id = take(&id);
  }
  freshet_actions actions = {0};
  freshet_error error = {0};
  bool ok = decide_raw(raw, &actions, &error);
  SETTLE(&out->actions, !ok, &actions, &error);
}

/* One mapped row's events with their actions settled. */
static pipeline_plugin_list_decided_event_t settle_events(const freshet_row *row, freshet_events *events) {
  for (size_t j = 0; j < events->len; j++) {
    pending_actions *pending = &events->pending[j];
    pipeline_plugin_decided_event_t *decided = &events->ptr[j];
    if (!events->deciding) { /* events only: whatever was decided is dropped */
      SETTLE(&decided->actions, false, &(freshet_actions){0}, &pending->error);
      pipeline_plugin_list_action_t given = {pending->actions.ptr, pending->actions.len};
      pipeline_plugin_list_action_free(&given);
    } else if (pending->given) {
      SETTLE(&decided->actions, pending->error.set, &pending->actions, &pending->error);
    } else {
      decide_event(row, j, decided);
    }
  }
  free(events->pending);
  return (pipeline_plugin_list_decided_event_t){events->ptr, events->len};
}

/* Frees the events of a row that failed, with whatever actions they had. */
static void discard_events(freshet_events *events) {
  for (size_t j = 0; j < events->len; j++) {
    pending_actions *pending = &events->pending[j];
    pipeline_plugin_list_action_t given = {pending->actions.ptr, pending->actions.len};
    pipeline_plugin_list_action_free(&given);
    freshet_buf_free(&pending->error.message);
    pipeline_plugin_event_free(&events->ptr[j].event);
  }
  free(events->pending);
  free(events->ptr);
}

void exports_pipeline_plugin_process(pipeline_plugin_row_batch_t *batch, bool decide,
                                     pipeline_plugin_list_result_list_decided_event_plugin_error_t *ret) {
  size_t n = batch->rows.len;
  ret->len = n;
  ret->ptr = n ? grow(NULL, n * sizeof *ret->ptr) : NULL;
  for (size_t i = 0; i < n; i++) {
    freshet_row row = {&batch->columns, &batch->rows.ptr[i]};
    freshet_events events = {.deciding = decide};
    freshet_error error = {0};
    pipeline_plugin_result_list_decided_event_plugin_error_t *entry = &ret->ptr[i];
    if (freshet_map_row(&row, &events, &error)) {
      entry->is_err = false;
      entry->val.ok = settle_events(&row, &events);
    } else {
      discard_events(&events);
      entry->is_err = true;
      entry->val.err = into_error(&error);
    }
    freshet_buf_free(&error.message);
  }
  pipeline_plugin_row_batch_free(batch);
}

void exports_pipeline_plugin_decide(pipeline_plugin_list_event_t *events,
                                    pipeline_plugin_list_result_list_action_plugin_error_t *ret) {
  size_t n = events->len;
  ret->len = n;
  ret->ptr = n ? grow(NULL, n * sizeof *ret->ptr) : NULL;
  for (size_t i = 0; i < n; i++) {
    freshet_actions actions = {0};
    freshet_error error = {0};
    bool ok = decide_raw(&events->ptr[i], &actions, &error);
    SETTLE(&ret->ptr[i], !ok, &actions, &error);
  }
  pipeline_plugin_list_event_free(events);
}
