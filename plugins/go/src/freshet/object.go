package freshet

import (
	"encoding/json/jsontext"
	"fmt"
	"math"
	"strconv"
)

// Object writes a JSON object's text member by member, in the order given,
// without reflection: encoding/json/v2's Marshal reflects on every value,
// which in a WebAssembly guest costs more than the rest of a row (measured
// on the orders plugin: see its page). Use one as an event's Body or an
// action's payload, or nest it in another:
//
//	var order freshet.Object
//	order.Text("purchaseID", id).Number("priceTotal", price)
//	body := new(freshet.Object).Text("eventType", kind).Object("order", &order)
//
// A value it cannot write (a float that is not finite, text that is not
// UTF-8) fails the object, naming the member: the error comes back from
// JSON, or fails the row or actions that carry it.
type Object struct {
	text []byte
	err  error
}

// Text adds a string member.
func (o *Object) Text(name, value string) *Object {
	if o.member(name) {
		o.quote(name, value)
	}
	return o
}

// Number adds a number member; NaN and infinities are not JSON.
func (o *Object) Number(name string, value float64) *Object {
	if !o.member(name) {
		return o
	}
	if math.IsNaN(value) || math.IsInf(value, 0) {
		o.err = fmt.Errorf("member `%s`: %v is not a JSON number", name, value)
		return o
	}
	o.text = jsontext.AppendFloat(o.text, value, 64)
	return o
}

// Int adds an integer member.
func (o *Object) Int(name string, value int64) *Object {
	if o.member(name) {
		o.text = strconv.AppendInt(o.text, value, 10)
	}
	return o
}

// Bool adds a boolean member.
func (o *Object) Bool(name string, value bool) *Object {
	if o.member(name) {
		o.text = strconv.AppendBool(o.text, value)
	}
	return o
}

// Object adds an object member.
func (o *Object) Object(name string, value *Object) *Object {
	if o.member(name) {
		o.nest(name, value)
	}
	return o
}

// Array adds a member holding an array of objects.
func (o *Object) Array(name string, items ...*Object) *Object {
	if !o.member(name) {
		return o
	}
	o.text = append(o.text, '[')
	for i, item := range items {
		if i > 0 {
			o.text = append(o.text, ',')
		}
		o.nest(name, item)
	}
	o.text = append(o.text, ']')
	return o
}

// Raw adds a member whose value is JSON text already.
func (o *Object) Raw(name string, value RawJSON) *Object {
	if o.member(name) {
		o.text = append(o.text, value...)
	}
	return o
}

// JSON is the object's text, or why it could not be written.
func (o *Object) JSON() (RawJSON, error) {
	if o.err != nil {
		return "", o.err
	}
	if len(o.text) == 0 {
		return "{}", nil
	}
	return RawJSON(o.text) + "}", nil
}

// member starts a member: false when the object has failed already.
func (o *Object) member(name string) bool {
	if o.err != nil {
		return false
	}
	if len(o.text) == 0 {
		// Room for a typical payload at once, rather than growing from 8.
		o.text = append(make([]byte, 0, 128), '{')
	} else {
		o.text = append(o.text, ',')
	}
	o.quote(name, name)
	o.text = append(o.text, ':')
	return o.err == nil
}

func (o *Object) quote(name, value string) {
	text, err := jsontext.AppendQuote(o.text, value)
	if err != nil {
		o.err = fmt.Errorf("member `%s`: %w", name, err)
	}
	o.text = text
}

func (o *Object) nest(name string, value *Object) {
	switch {
	case value.err != nil:
		o.err = fmt.Errorf("member `%s`: %w", name, value.err)
	case len(value.text) == 0:
		o.text = append(o.text, "{}"...)
	default:
		o.text = append(append(o.text, value.text...), '}')
	}
}
