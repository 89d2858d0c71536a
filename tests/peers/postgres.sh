#!/usr/bin/env bash
# A scratch PostgreSQL server on loopback, for trying hosts that share
# pipelines and for `freshet bench cluster`: Debian's package (.ci/setup
# installs it), initdb + pg_ctl in a folder of its own, no system service.
#
#   tests/peers/postgres.sh start DIR [PORT]   prints the connection URL
#   tests/peers/postgres.sh stop DIR
#
# As root the server runs as the `postgres` user (it refuses root).
set -euo pipefail
cmd=${1:?start or stop}; dir=${2:?a folder}; port=${3:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg=()
[[ "$(id -u)" == 0 ]] && as_pg=(runuser -u postgres --)
case "$cmd" in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ "$(id -u)" == 0 ]] && chown postgres: "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
      "${as_pg[@]}" "$bin/initdb" -U postgres --auth=trust -E UTF8 -D "$dir/data" >/dev/null
    fi
    "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
