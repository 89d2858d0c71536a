#!/usr/bin/env bash
# Compares freshet binaries end to end, interleaved:
#   tests/peers/ab.sh OLD/freshet NEW/freshet [MORE/freshet ...]
# Each run is `freshet run --once` over the same sample orders (SQLite, page
# 5,000, batch 500, the Rust orders plugin, its actions to `record` targets),
# against a fresh `freshet-peers receiver` process; it prints one JSON line
# per run: wall seconds (start-up included), rows/s, peak RSS, and the CPU
# seconds per million rows of freshet and of the receiver. One warm-up run
# per binary fills the component cache first.
# Env: ROWS (200000), RUNS (3), PLUGIN, INSTANCES (the pipeline's; default
# its own), PEERS (the freshet-peers binary),
# PERF=1 to record each run with `perf record -g` into perf.BINARY.N.data here.
set -euo pipefail
target="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
PEERS="${PEERS:-$target/release/freshet-peers}"
PLUGIN="${PLUGIN:-$target/wasm-guests/wasm32-wasip2/release/freshet_orders_plugin.wasm}"
ROWS="${ROWS:-200000}"
for f in "$PEERS" "$PLUGIN" "$@" /usr/bin/time; do [[ -e "$f" ]] || { echo "missing: $f" >&2; exit 2; }; done
command -v curl >/dev/null || { echo "missing: curl" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$1" sample --db "$work/orders.db" --rows "$ROWS" >/dev/null
echo "work folder: $work" >&2

run() { # BINARY LABEL
  local bin="$1" label="$2" dir url peer
  dir="$(mktemp -d "$work/run.XXXX")"
  mkfifo "$dir/stdin"
  "$PEERS" receiver <"$dir/stdin" >"$dir/port" &
  peer=$!
  exec 7>"$dir/stdin" # the receiver lives until this closes
  until grep -q listening "$dir/port" 2>/dev/null; do sleep 0.05; done
  url="http://127.0.0.1:$(awk '{print $3}' "$dir/port")"
  cat >"$dir/config.toml" <<TOML
[engine]
cache_dir = "$work/cache"

[state]
path = "$dir/state.db"

[pipelines.orders]
plugin = "$PLUGIN"
batch_size = 500
${INSTANCES:+instances = $INSTANCES}
plugin_settings = { tenant = "acme" }

[pipelines.orders.source]
kind = "sqlite"
path = "$work/orders.db"
table = "orders"
key_column = "id"
page_size = 5000
backfill = true
timestamp = { column = "updated_at", unit = "ms" }

[pipelines.orders.deliver]
kind = "aep"
base_url = "$url"
connection_id = "conn-1"
ims_org = "TEST@AdobeOrg"
dataset_id = "ds-1"
flow_id = "flow-1"
schema_id = "https://ns.adobe.com/acme/schemas/orders"

[pipelines.orders.targets.order-confirmation]
kind = "record"
path = "$dir/email.ndjson"

[pipelines.orders.targets.order-confirmed]
kind = "record"
path = "$dir/webhook.ndjson"

[pipelines.orders.targets.crm]
kind = "record"
path = "$dir/crm.ndjson"
TOML
  local perf=()
  [[ -n "${PERF:-}" ]] && perf=(perf record -q -F 1999 -g -o "perf.$(basename "$label").$RANDOM.data" --)
  local t0 t1
  t0=$(date +%s.%N)
  FRESHET_LOG=warn /usr/bin/time -f "%M %U %S" -o "$dir/rss" "${perf[@]}" "$bin" run --once \
    --config "$dir/config.toml" >/dev/null
  t1=$(date +%s.%N)
  local counts
  counts="$(curl -sf "$url/freshet-peer/counts")"
  local ticks # the receiver's user + system CPU, in clock ticks
  ticks="$(awk '{print $14 + $15}' "/proc/$peer/stat")"
  exec 7>&-
  wait "$peer" || true
  python3 - "$label" "$t0" "$t1" "$ROWS" "$counts" "$dir/rss" "$ticks" "$(getconf CLK_TCK)" <<'PY'
import json, sys
label, t0, t1, rows, counts, rss, ticks, hz = sys.argv[1:]
counts, rows, seconds = json.loads(counts), int(rows), float(t1) - float(t0)
if counts["messages"] != rows:
    sys.exit(f"{label}: the receiver got {counts['messages']} of {rows} events")
peak, user, system = open(rss).read().split()[-3:]
per_m = lambda s: round(s * 1e6 / rows, 2)
print(json.dumps({"binary": label, "seconds": round(seconds, 3),
                  "rows_per_s": round(rows / seconds), "peak_rss_mb": round(int(peak) / 1024),
                  "cpu_s_per_m_rows": per_m(float(user) + float(system)),
                  "receiver_cpu_s_per_m_rows": per_m(int(ticks) / int(hz))}))
PY
  rm -rf "$dir"
}

for bin in "$@"; do run "$bin" warm-up >/dev/null; done
for _ in $(seq "${RUNS:-3}"); do
  for bin in "$@"; do run "$bin" "$bin"; done
done
