// Package orders is the example orders plugin in Go: the same behaviour as
// plugins/rust.
//
// It reads an `orders` row (id, customer_email, status, amount, currency,
// updated_at), maps it to an XDM ExperienceEvent and decides: confirmed →
// e-mail `order-confirmation` + webhook `order-confirmed`; cancelled → CRM
// update of the contact. Setting `tenant` (default `freshet`) names the
// `_{tenant}` field group; `decide_from` (`row`, the default, or `event`)
// whether actions come from the row's fields or, as decide would find them,
// from the event's stored body (the helper's fallback for an event given
// without actions).
//
// Contract 0.2: each event carries its actions, decided from the row's own
// fields (mapRow); decide reads them back from a stored event's body.
package orders

import (
	"bytes"
	"encoding/json/jsontext"
	"encoding/json/v2"
	"fmt"
	"math"
	"strconv"

	"wit_component/freshet"
)

// Plugin is what export_wit_world exports.
var Plugin = freshet.Plugin{MapRow: mapRow, Decide: decide}

var columns = [...]string{"id", "customer_email", "status", "amount", "currency", "updated_at"}

func tenantKey() string { return "_" + freshet.Setting("tenant", "freshet") }

// decideFromRow reads setting `decide_from`: `row` (default) or `event`.
func decideFromRow() (bool, error) {
	switch where := freshet.Setting("decide_from", "row"); where {
	case "row", "event":
		return where == "row", nil
	default:
		return false, freshet.Rejectf("setting `decide_from` is `%s`; expected `row` or `event`", where)
	}
}

// text is a cell as text, or a rejection naming the column. Floats are
// refused: money and ids are exact.
func text(column string, value any) (string, error) {
	switch v := value.(type) {
	case string:
		return v, nil
	case freshet.Decimal:
		return string(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case nil:
		return "", freshet.Rejectf("column `%s` is null", column)
	}
	return "", freshet.Rejectf("column `%s` has type %s, expected text", column, freshet.TypeName(value))
}

// decimal reads plain decimal notation only (`-12.50`; not `+1`, `.5`,
// `1e3`), as every language's orders plugin accepts exactly the same amounts.
func decimal(s string) (float64, bool) {
	digits := s
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	dot, seen := 0, 0
	for i := 0; i < len(digits); i++ {
		switch c := digits[i]; {
		case c == '.' && dot == 0:
			dot = i + 1
			if seen == 0 {
				return 0, false
			}
		case c >= '0' && c <= '9':
			seen++
		default:
			return 0, false
		}
	}
	if seen == 0 || dot == len(digits) {
		return 0, false
	}
	value, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(value, 0) || math.IsNaN(value) {
		return 0, false
	}
	return value, true
}

func mapRow(row freshet.Row) ([]freshet.Event, error) {
	// Every column is looked up before any is checked, as the other languages do.
	var cells [len(columns)]any
	for i, column := range columns {
		cell, err := row.Get(column)
		if err != nil {
			return nil, err
		}
		cells[i] = cell
	}
	var fields [5]string
	for i := range fields {
		value, err := text(columns[i], cells[i])
		if err != nil {
			return nil, err
		}
		fields[i] = value
	}
	id, email, status, amount, currency := fields[0], fields[1], fields[2], fields[3], fields[4]
	updatedAt, ok := cells[5].(freshet.Instant)
	if !ok {
		return nil, freshet.Rejectf("column `updated_at` has type %s, expected timestamp", freshet.TypeName(cells[5]))
	}
	if email == "" {
		return nil, freshet.Rejectf("customer_email is empty")
	}
	price, ok := decimal(amount)
	if !ok {
		return nil, freshet.Rejectf("amount `%s` is not a decimal number", amount)
	}
	confirmed := status == "confirmed"
	eventType, purchases := "commerce.order."+status, int64(0)
	if confirmed {
		eventType, purchases = "commerce.purchases", 1
	}
	// Written member by member (freshet.Object): reflection in
	// encoding/json/v2 cost more than the rest of the row.
	body := new(freshet.Object).Text("eventType", eventType).
		Object("identityMap", new(freshet.Object).Array("Email",
			new(freshet.Object).Text("id", email).Bool("primary", true).Text("authenticatedState", "authenticated"))).
		Object("commerce", new(freshet.Object).
			Object("order", new(freshet.Object).Text("purchaseID", id).Number("priceTotal", price).Text("currencyCode", currency)).
			Object("purchases", new(freshet.Object).Int("value", purchases))).
		Object(tenantKey(), new(freshet.Object).Text("orderId", id).Text("orderStatus", status).Text("amount", amount))
	// The `_id` is left to the host (SHA-256 of the identity and index 0);
	// the actions ask for it only when they quote it. Without actions the
	// helper calls decide on the event.
	fromRow, err := decideFromRow()
	if err != nil {
		return nil, err
	}
	if !fromRow {
		return []freshet.Event{{Timestamp: updatedAt, Body: body}}, nil
	}
	o := order{id: id, status: status, amount: amount, currency: currency, email: email}
	return []freshet.Event{{
		Timestamp: updatedAt,
		Body:      body,
		Actions:   func() ([]freshet.Action, error) { return actions(func() string { return row.EventID(0) }, o) },
	}}, nil
}

// What decide reads back from a body map_row wrote. Pointers tell a
// missing or null member from an empty one: both are refused, as serde
// refuses them in the Rust plugin.
type tenantFields struct {
	OrderID *string `json:"orderId"`
	Status  *string `json:"orderStatus"`
	Amount  *string `json:"amount"`
}

type identities struct {
	Email []struct {
		ID *string `json:"id"`
	} `json:"Email"`
}

type commerce struct {
	Order *struct {
		CurrencyCode *string `json:"currencyCode"`
	} `json:"order"`
}

// strict is how decide reads JSON: names matched exactly (encoding/json/v2's
// default) and, as serde_json does, a repeated name's last value wins.
var strict = jsontext.AllowDuplicateNames(true)

// decode reads one JSON value into `into`, which must be an object.
func decode(raw []byte, into any) error {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 || raw[0] != '{' {
		return fmt.Errorf("not an object")
	}
	return json.Unmarshal(raw, into, strict)
}

// order is what deciding needs: read from a row, or from a stored event.
type order struct{ id, status, amount, currency, email string }

func read(body map[string]jsontext.Value, eventID, tenant string) (order, error) {
	var o order
	field := func(name string, into any) error {
		raw, ok := body[name]
		if !ok {
			return freshet.Rejectf("event %s has no `%s`", eventID, name)
		}
		if err := decode(raw, into); err != nil {
			return freshet.Rejectf("event %s: %s: %v", eventID, name, err)
		}
		return nil
	}
	missing := func(what string) error {
		return freshet.Rejectf("event %s: %s: missing or not text", eventID, what)
	}
	var own tenantFields
	if err := field(tenant, &own); err != nil {
		return o, err
	}
	if own.OrderID == nil || own.Status == nil || own.Amount == nil {
		return o, missing(tenant)
	}
	o.id, o.status, o.amount = *own.OrderID, *own.Status, *own.Amount
	var ids identities
	if err := field("identityMap", &ids); err != nil {
		return o, err
	}
	for i, identity := range ids.Email {
		if identity.ID == nil {
			return o, missing("identityMap.Email.id")
		}
		if i == 0 {
			o.email = *identity.ID
		}
	}
	var c commerce
	if err := field("commerce", &c); err != nil {
		return o, err
	}
	if c.Order == nil || c.Order.CurrencyCode == nil {
		return o, missing("commerce.order.currencyCode")
	}
	o.currency = *c.Order.CurrencyCode
	return o, nil
}

func decide(event freshet.EventIn) ([]freshet.Action, error) {
	var body map[string]jsontext.Value
	if err := decode([]byte(event.Body), &body); err != nil {
		return nil, freshet.Rejectf("event %s: body: %v", event.Id, err)
	}
	o, err := read(body, event.Id, tenantKey())
	if err != nil {
		return nil, err
	}
	return actions(func() string { return event.Id }, o)
}

// actions are an order's actions, from the row or from a stored event
// alike; eventID() gives the event's `_id` (asked only when quoted).
func actions(eventID func() string, o order) ([]freshet.Action, error) {
	if o.email == "" || o.id == "" {
		return nil, freshet.Rejectf("event %s has no order id or e-mail", eventID())
	}
	switch o.status {
	case "confirmed":
		return []freshet.Action{
			freshet.Email{
				Target: "order-confirmation", To: o.email, Template: "order-confirmation",
				Variables: new(freshet.Object).Text("orderId", o.id).Text("amount", o.amount).Text("currency", o.currency),
			},
			freshet.Webhook{Target: "order-confirmed", Body: new(freshet.Object).Text("eventId", eventID()).
				Text("orderId", o.id).Text("email", o.email).Text("amount", o.amount).Text("currency", o.currency)},
		}, nil
	case "cancelled":
		return []freshet.Action{freshet.CrmUpdate{
			Target: "crm", Object: "Contact", ExternalID: o.email,
			Fields: new(freshet.Object).Text("last_order_id", o.id).Text("last_order_status", "cancelled"),
		}}, nil
	}
	return nil, nil
}
