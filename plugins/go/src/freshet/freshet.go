// Package freshet is the freshet plugin contract (freshet:plugin@0.2.0), the
// Go way.
//
// The bindings `wit-bindgen go` generates speak in tagged variants and
// witTypes.Result values; this package hides them. A plugin writes two plain
// functions, one input each, and wires them up in export_wit_world:
//
//	var Plugin = freshet.Plugin{MapRow: mapRow, Decide: decide}
//
//	func mapRow(row freshet.Row) ([]freshet.Event, error) { ... }
//	func decide(event freshet.EventIn) ([]freshet.Action, error) { ... }
//
// What the helper does for it:
//
//   - A row crosses the boundary once: MapRow's events may carry their
//     actions (Event.Actions, a function called only when the pipeline wants
//     actions), decided from the row in hand; an event without them is handed
//     to Decide, which also serves events stored earlier (`freshet dlq
//     replay`).
//   - An event may leave its ID empty: the host derives it from the row's
//     identity and the event's index (Row.EventID tells the value).
//   - Cells arrive as Go values: nil, bool, int64, Decimal (the exact
//     decimal's text), float64, string, Instant, Date, JSON, []byte;
//     TypeName gives the contract's name for each.
//   - Return a Reject (freshet.Rejectf) to refuse one row or event (the host
//     dead-letters it with your message); any other error becomes the
//     contract's `internal` error, and so does a panic, with its message in
//     the host's log.
//   - Event bodies and action payloads may be any value encoding/json/v2
//     writes (map keys sorted), a RawJSON, or an Object (written member by
//     member, without reflection: several times faster in a guest).
//   - Log writes to the host's log (tagged with the tenant and pipeline);
//     Setting reads the pipeline's plugin settings.
package freshet

import (
	"encoding/json/v2"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"

	decisions "wit_component/freshet_plugin_decisions"
	host "wit_component/freshet_plugin_host"
	types "wit_component/freshet_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Instant is an instant in UTC: Seconds and Nanos since 1970 (Seconds < 0 before).
type Instant = types.Instant

// EventIn is an event as Decide receives it: Id, Timestamp and Body (JSON text).
type EventIn = types.Event

// Decimal is an exact decimal, as the text the source gave (e.g. "-12.50").
type Decimal string

// Date is a DATE: days since 1970-01-01.
type Date int32

// JSON is a JSON cell (VARIANT, OBJECT, ARRAY), as text.
type JSON string

// RawJSON is a payload that is JSON text already: written as it is.
type RawJSON string

// Reject refuses one input: the contract's `reject` error.
type Reject struct{ Reason string }

func (r *Reject) Error() string { return r.Reason }

// Rejectf makes a Reject with a formatted reason.
func Rejectf(format string, args ...any) error {
	return &Reject{fmt.Sprintf(format, args...)}
}

// TypeName is the contract's name for a cell's type: "null", "text", "float", ...
func TypeName(value any) string {
	switch value.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case int64:
		return "integer"
	case Decimal:
		return "decimal"
	case float64:
		return "float"
	case string:
		return "text"
	case Instant:
		return "timestamp"
	case Date:
		return "date"
	case JSON:
		return "json"
	case []byte:
		return "binary"
	}
	panic(fmt.Sprintf("%T is not a cell type", value))
}

func native(cell types.Value) any {
	switch cell.Tag() {
	case types.ValueBoolean:
		return cell.Boolean()
	case types.ValueInteger:
		return cell.Integer()
	case types.ValueDecimal:
		return Decimal(cell.Decimal())
	case types.ValueFloat:
		return cell.Float()
	case types.ValueText:
		return cell.Text()
	case types.ValueTimestamp:
		return cell.Timestamp()
	case types.ValueDate:
		return Date(cell.Date())
	case types.ValueJson:
		return JSON(cell.Json())
	case types.ValueBinary:
		return cell.Binary()
	}
	return nil
}

// Row is one source row.
type Row struct {
	// Identity is the row's key and timestamp as text, stable across replays.
	Identity string
	cells    []types.Value
	index    map[string]int
}

// Get is the cell of `column` as a Go value, or a Reject when the source
// has no such column.
func (r Row) Get(column string) (any, error) {
	position, ok := r.index[column]
	if !ok {
		return nil, Rejectf("the source has no column `%s`", column)
	}
	return native(r.cells[position]), nil
}

// EventID is the `_id` the host gives this row's event number `index` when
// the plugin leaves it empty: for quoting it in an action's payload.
func (r Row) EventID(index int) string {
	return host.EventId(r.Identity, uint32(index))
}

// Event is an XDM ExperienceEvent: Body is the xdmEntity without `_id` and
// `timestamp`; ID may stay empty for the host to derive.
type Event struct {
	ID        string
	Timestamp Instant
	Body      any
	// Actions, when set, decides the event's actions from the row in hand;
	// it is called only when the pipeline wants actions, and its error fails
	// the actions, not the event. Unset, the event goes to Decide.
	Actions func() ([]Action, error)
}

// Action is what Decide asks the host to do: an Email, a Webhook or a CrmUpdate.
type Action interface{ raw() (types.Action, error) }

// Email sends e-mail Template to To through the Target the operator configured.
type Email struct {
	Target, To, Template string
	Variables            any
}

// Webhook POSTs Body (JSON) to the webhook Target.
type Webhook struct {
	Target string
	Body   any
}

// CrmUpdate upserts the Object keyed by ExternalID with Fields through Target.
type CrmUpdate struct {
	Target, Object, ExternalID string
	Fields                     any
}

func (e Email) raw() (types.Action, error) {
	variables, err := encode(e.Variables)
	return types.MakeActionEmail(types.EmailRequest{
		Target: e.Target, To: e.To, Template: e.Template, Variables: variables,
	}), err
}

func (w Webhook) raw() (types.Action, error) {
	body, err := encode(w.Body)
	return types.MakeActionWebhook(types.WebhookRequest{Target: w.Target, Body: body}), err
}

func (c CrmUpdate) raw() (types.Action, error) {
	fields, err := encode(c.Fields)
	return types.MakeActionCrmUpdate(types.CrmUpdateRequest{
		Target: c.Target, Object: c.Object, ExternalId: c.ExternalID, Fields: fields,
	}), err
}

// encode writes a payload as JSON text, map keys sorted so the same input
// always gives the same bytes; a RawJSON is passed as it is, an Object
// gives its text.
func encode(value any) (string, error) {
	switch v := value.(type) {
	case RawJSON:
		return string(v), nil
	case *Object:
		text, err := v.JSON()
		return string(text), err
	}
	text, err := json.Marshal(value, json.Deterministic(true))
	return string(text), err
}

// Setting is the pipeline's plugin setting `name` (`plugin_settings` in its
// config), or `fallback` when it is unset. Read once per call: asking the
// host crosses the sandbox boundary.
func Setting(name, fallback string) string {
	value, ok := settings[name]
	if !ok {
		answer := host.GetSetting(name)
		value = setting{answer.SomeOr(""), answer.IsSome()}
		settings[name] = value
	}
	if !value.set {
		return fallback
	}
	return value.text
}

type setting struct {
	text string
	set  bool
}

var settings = map[string]setting{}

// Level is a log line's severity.
type Level = host.Level

// The levels of Log.
const (
	Trace = host.LevelTrace
	Debug = host.LevelDebug
	Info  = host.LevelInfo
	Warn  = host.LevelWarn
	Error = host.LevelError
)

// Log writes a line in the host's log, tagged with the tenant and pipeline.
func Log(level Level, format string, args ...any) {
	host.Log(level, fmt.Sprintf(format, args...))
}

// Plugin is the component's exports, built from two per-input functions.
type Plugin struct {
	MapRow func(Row) ([]Event, error)
	Decide func(EventIn) ([]Action, error)
}

// ExportProcess answers `process`: each row on its own, so one that fails
// fails alone, and each event's actions on their own.
func (p Plugin) ExportProcess(
	batch types.RowBatch, deciding bool,
) []witTypes.Result[[]decisions.DecidedEvent, types.PluginError] {
	index := make(map[string]int, len(batch.Columns))
	for position, name := range batch.Columns {
		index[name] = position
	}
	return answer("map_row", batch.Rows, func(raw types.Row) ([]Event, error) {
		return p.MapRow(Row{raw.Identity, raw.Cells, index})
	}, func(row types.Row, at int, e Event) (decisions.DecidedEvent, error) {
		event, err := rawEvent(e)
		if err != nil || !deciding {
			return decisions.DecidedEvent{Event: event, Actions: noActions()}, err
		}
		decide := e.Actions
		if decide == nil {
			// Decide sees the event as it will be stored: with its `_id`.
			if event.Id == "" {
				event.Id = host.EventId(row.Identity, uint32(at))
			}
			decide = func() ([]Action, error) { return p.Decide(event) }
		}
		return decisions.DecidedEvent{Event: event, Actions: actions(decide)}, nil
	})
}

func noActions() witTypes.Result[[]types.Action, types.PluginError] {
	return witTypes.Ok[[]types.Action, types.PluginError](nil)
}

// actions is one event's actions, or their failure.
func actions(decide func() ([]Action, error)) witTypes.Result[[]types.Action, types.PluginError] {
	raws, err := call("decide", func() ([]types.Action, error) { return rawActions(decide()) })
	if err != nil {
		return witTypes.Err[[]types.Action](contractError(err))
	}
	return witTypes.Ok[[]types.Action, types.PluginError](raws)
}

func rawActions(actions []Action, err error) ([]types.Action, error) {
	if err != nil {
		return nil, err
	}
	out := make([]types.Action, 0, len(actions))
	for _, action := range actions {
		raw, err := action.raw()
		if err != nil {
			return nil, err
		}
		out = append(out, raw)
	}
	return out, nil
}

// ExportDecide answers `decide`: each event on its own.
func (p Plugin) ExportDecide(events []types.Event) []witTypes.Result[[]types.Action, types.PluginError] {
	return answer("decide", events, p.Decide, func(_ types.Event, _ int, a Action) (types.Action, error) {
		return a.raw()
	})
}

// answer runs `f` over each input and turns its outputs into the
// contract's (`raw`, given the input and the output's index), or its
// failure into the input's error.
func answer[In, Out, Raw any](
	name string, inputs []In, f func(In) ([]Out, error), raw func(In, int, Out) (Raw, error),
) []witTypes.Result[[]Raw, types.PluginError] {
	begin()
	out := make([]witTypes.Result[[]Raw, types.PluginError], len(inputs))
	for i, input := range inputs {
		raws, err := call(name, func() ([]Raw, error) {
			outputs, err := f(input)
			if err != nil {
				return nil, err
			}
			raws := make([]Raw, 0, len(outputs))
			for at, output := range outputs {
				r, err := raw(input, at, output)
				if err != nil {
					return nil, err
				}
				raws = append(raws, r)
			}
			return raws, nil
		})
		if err != nil {
			out[i] = witTypes.Err[[]Raw](contractError(err))
		} else {
			out[i] = witTypes.Ok[[]Raw, types.PluginError](raws)
		}
	}
	return out
}

func rawEvent(e Event) (types.Event, error) {
	body, err := encode(e.Body)
	return types.Event{Id: e.ID, Timestamp: e.Timestamp, Body: body}, err
}

// call runs one input's function, turning a panic into that input's error.
func call[T any](name string, f func() (T, error)) (out T, err error) {
	defer func() {
		if p := recover(); p != nil {
			Log(Error, "%s panicked: %v\n%s", name, p, debug.Stack())
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return f()
}

func contractError(err error) types.PluginError {
	var reject *Reject
	if errors.As(err, &reject) {
		return types.MakePluginErrorReject(reject.Reason)
	}
	return types.MakePluginErrorInternal(err.Error())
}

// The Go runtime's collector may run inside `cabi_realloc` while the host
// copies arguments in, and from there reads the WASI clock: a call out of
// the component the component model forbids, so the instance traps
// (wasmtime issue 14318). Automatic collection is off; an export call
// collects at its start, between calls, once the calls since the last
// collection have allocated collectBytes. By bytes, not calls: a heap left
// to grow over many large batches costs more in fresh memory pages than the
// collections it saves (measured: every 32 calls of 500 rows ran the orders
// plugin end to end at 8–10k rows/s, every 4 calls at 25–27k). And not much
// more: the collection runs on the fuel of the call that starts it, and
// after 8 MiB it outran a one-row call's budget.
const collectBytes = 2 << 20

var (
	allocated     = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	lastCollected uint64
)

func init() { debug.SetGCPercent(-1) }

// begin starts an export call: fresh settings, and a collection when due.
func begin() {
	clear(settings)
	metrics.Read(allocated)
	if total := allocated[0].Value.Uint64(); total-lastCollected >= collectBytes {
		runtime.GC()
		lastCollected = total
	}
}
