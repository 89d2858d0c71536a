// Package export_wit_world is where wit-bindgen's generated glue looks for
// the world's exports: here they hand over to the orders plugin.
package export_wit_world

import (
	decisions "wit_component/freshet_plugin_decisions"
	types "wit_component/freshet_plugin_types"
	"wit_component/orders"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Process is the world's `process` export.
func Process(batch types.RowBatch, decide bool) []witTypes.Result[[]decisions.DecidedEvent, types.PluginError] {
	return orders.Plugin.ExportProcess(batch, decide)
}

// Decide is the world's `decide` export.
func Decide(events []types.Event) []witTypes.Result[[]types.Action, types.PluginError] {
	return orders.Plugin.ExportDecide(events)
}
