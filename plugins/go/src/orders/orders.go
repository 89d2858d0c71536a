// Package orders is the example orders plugin in Go: the same behaviour as
// plugins/rust.
//
// It reads an `orders` row (id, customer_email, status, amount, currency,
// updated_at), maps it to an XDM ExperienceEvent and decides: confirmed →
// e-mail `order-confirmation` + webhook `order-confirmed`; cancelled → CRM
// update of the contact. Setting `tenant` (default `freshet`) names the
// `_{tenant}` field group.
package orders

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"wit_component/freshet"
)

// Plugin is what export_wit_world exports.
var Plugin = freshet.Plugin{MapRow: mapRow, Decide: decide}

var columns = [...]string{"id", "customer_email", "status", "amount", "currency", "updated_at"}

func tenantKey() string { return "_" + freshet.Setting("tenant", "freshet") }

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
	eventType, purchases := "commerce.order."+status, 0
	if confirmed {
		eventType, purchases = "commerce.purchases", 1
	}
	body := map[string]any{
		"eventType": eventType,
		"identityMap": map[string]any{"Email": []any{map[string]any{
			"id": email, "primary": true, "authenticatedState": "authenticated",
		}}},
		"commerce": map[string]any{
			"order":     map[string]any{"purchaseID": id, "priceTotal": price, "currencyCode": currency},
			"purchases": map[string]any{"value": purchases},
		},
		tenantKey(): map[string]string{"orderId": id, "orderStatus": status, "amount": amount},
	}
	digest := sha256.Sum256([]byte(row.Identity))
	return []freshet.Event{{ID: hex.EncodeToString(digest[:]), Timestamp: updatedAt, Body: body}}, nil
}

// object reads a JSON object's members, or says it is not one.
func object(raw json.RawMessage) (map[string]json.RawMessage, error) {
	if len(raw) == 0 || raw[0] != '{' {
		return nil, fmt.Errorf("not an object")
	}
	var members map[string]json.RawMessage
	err := json.Unmarshal(raw, &members)
	return members, err
}

// member reads the string member `name` of an object, which must be there.
func member(members map[string]json.RawMessage, name string) (string, error) {
	raw, ok := members[name]
	if !ok || len(raw) == 0 || raw[0] != '"' {
		return "", fmt.Errorf("`%s` is not text", name)
	}
	var value string
	err := json.Unmarshal(raw, &value)
	return value, err
}

// order is what decide reads back from a body map_row wrote.
type order struct{ id, status, amount, currency, email string }

func read(body map[string]json.RawMessage, eventID, tenant string) (order, error) {
	var o order
	field := func(name string) (json.RawMessage, error) {
		raw, ok := body[name]
		if !ok {
			return nil, freshet.Rejectf("event %s has no `%s`", eventID, name)
		}
		return raw, nil
	}
	bad := func(what string, err error) error {
		return freshet.Rejectf("event %s: %s: %v", eventID, what, err)
	}
	raw, err := field(tenant)
	if err != nil {
		return o, err
	}
	own, err := object(raw)
	if err != nil {
		return o, bad(tenant, err)
	}
	for _, f := range []struct {
		name string
		to   *string
	}{{"orderId", &o.id}, {"orderStatus", &o.status}, {"amount", &o.amount}} {
		if *f.to, err = member(own, f.name); err != nil {
			return o, bad(tenant, err)
		}
	}
	if raw, err = field("identityMap"); err != nil {
		return o, err
	}
	identities, err := object(raw)
	if err != nil {
		return o, bad("identityMap", err)
	}
	if list, ok := identities["Email"]; ok {
		var emails []json.RawMessage
		if len(list) == 0 || list[0] != '[' || json.Unmarshal(list, &emails) != nil {
			return o, bad("identityMap", fmt.Errorf("`Email` is not a list"))
		}
		for i, raw := range emails {
			identity, err := object(raw)
			if err != nil {
				return o, bad("identityMap", err)
			}
			id, err := member(identity, "id")
			if err != nil {
				return o, bad("identityMap", err)
			}
			if i == 0 {
				o.email = id
			}
		}
	}
	if raw, err = field("commerce"); err != nil {
		return o, err
	}
	commerce, err := object(raw)
	if err == nil {
		var purchase map[string]json.RawMessage
		if purchase, err = object(commerce["order"]); err == nil {
			o.currency, err = member(purchase, "currencyCode")
		}
	}
	if err != nil {
		return o, bad("commerce", err)
	}
	return o, nil
}

func decide(event freshet.EventIn) ([]freshet.Action, error) {
	body, err := object(json.RawMessage(event.Body))
	if err != nil {
		return nil, freshet.Rejectf("event %s: body: %v", event.Id, err)
	}
	o, err := read(body, event.Id, tenantKey())
	if err != nil {
		return nil, err
	}
	if o.email == "" || o.id == "" {
		return nil, freshet.Rejectf("event %s has no order id or e-mail", event.Id)
	}
	switch o.status {
	case "confirmed":
		return []freshet.Action{
			freshet.Email{
				Target: "order-confirmation", To: o.email, Template: "order-confirmation",
				Variables: map[string]string{"orderId": o.id, "amount": o.amount, "currency": o.currency},
			},
			freshet.Webhook{Target: "order-confirmed", Body: map[string]string{
				"eventId": event.Id, "orderId": o.id, "email": o.email, "amount": o.amount, "currency": o.currency,
			}},
		}, nil
	case "cancelled":
		return []freshet.Action{freshet.CrmUpdate{
			Target: "crm", Object: "Contact", ExternalID: o.email,
			Fields: map[string]string{"last_order_id": o.id, "last_order_status": "cancelled"},
		}}, nil
	}
	freshet.Log(freshet.Debug, "event %s: no action", event.Id)
	return nil, nil
}
