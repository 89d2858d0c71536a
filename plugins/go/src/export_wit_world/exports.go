// Package export_wit_world is where wit-bindgen's generated glue looks for
// the world's exports: here they hand over to the orders plugin.
package export_wit_world

import (
	types "wit_component/freshet_plugin_types"
	"wit_component/orders"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// MapRows is the world's `map-rows` export.
func MapRows(batch types.RowBatch) []witTypes.Result[[]types.Event, types.PluginError] {
	return orders.Plugin.ExportMapRows(batch)
}

// Decide is the world's `decide` export.
func Decide(events []types.Event) []witTypes.Result[[]types.Action, types.PluginError] {
	return orders.Plugin.ExportDecide(events)
}
