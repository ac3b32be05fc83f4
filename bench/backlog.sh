#!/usr/bin/env bash
# bench/backlog.sh [N]
#
# Throughput over a backlog of N inserted rows (default 100000, in 100-row
# transactions), measured side by side in one run on one throwaway PostgreSQL:
#   - pg_recvlogical decoding the backlog into /dev/null (the decoding limit);
#   - walhook capture + durable store: until its slot's confirmed_flush_lsn
#     reaches the end of the backlog;
#   - walhook end to end: until a local sink has received all N events
#     (one subscription, one POST per event, keep-alive).
# Prints one markdown table and writes it to bench/results/backlog-<date>.md.
# Only 127.0.0.1 is used; everything started here is stopped on exit.
set -euo pipefail

N=${1:-100000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

find_bindir() {
  local d
  if [ -n "${WALHOOK_PG_BIN:-}" ]; then echo "$WALHOOK_PG_BIN"; return; fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  dirname "$(command -v initdb)"
}
BIN=$(find_bindir)
[ -x "$BIN/initdb" ] || { echo "no PostgreSQL server binaries; apt-get install postgresql or set WALHOOK_PG_BIN" >&2; exit 1; }

echo "building (release)..." >&2
cargo build --release --quiet --bin walhook --example sink
WALHOOK="$ROOT/target/release/walhook"
SINK="$ROOT/target/release/examples/sink"

WORK=$(mktemp -d /tmp/walhook-bench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 256MB
EOF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -w -l "$WORK/data/log" start >/dev/null
PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1)

"${PSQL[@]}" >/dev/null <<'SQL'
CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, total numeric(10,2) NOT NULL,
                     status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE PUBLICATION bench FOR TABLE orders;
SELECT pg_create_logical_replication_slot('recv', 'pgoutput');
SELECT pg_create_logical_replication_slot('walhook', 'pgoutput');
SQL

echo "filling a backlog of $N rows..." >&2
for ((i = 0; i < N / 100; i++)); do
  echo "INSERT INTO orders (customer, total, status) SELECT 'customer ' || g, (g % 1000) + 0.25, 'new' FROM generate_series(1, 100) g;"
done | "${PSQL[@]}" >/dev/null
END_LSN=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")

now() { date +%s.%N; }

echo "pg_recvlogical..." >&2
t0=$(now)
"$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -S recv --start \
  --endpos="$END_LSN" -o proto_version=1 -o publication_names=bench -f /dev/null
t1=$(now)
RECV_S=$(echo "$t1 - $t0" | bc -l)

"$SINK" 127.0.0.1:0 > "$WORK/sink.addr" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/sink.addr" ] && break; sleep 0.05; done
SINK_ADDR=$(head -1 "$WORK/sink.addr")

cat > "$WORK/walhook.toml" <<EOF
[source]
url = "postgres://postgres@127.0.0.1:$PORT/postgres"
slot = "walhook"
publication = "bench"
manage_publication = false

[store]
path = "$WORK/store"

[admin]
listen = "127.0.0.1:0"

[[tables]]
name = "public.orders"
form = "orders"

[[subscriptions]]
name = "sink"
url = "http://$SINK_ADDR/hook"
EOF

echo "walhook..." >&2
t0=$(now)
RUST_LOG=warn "$WALHOOK" run -c "$WORK/walhook.toml" 2> "$WORK/walhook.log" &
WPID=$!
PIDS+=($WPID)
CAP_S="" ; DEL_S=""
deadline=$(( $(date +%s) + 600 ))
while [ -z "$CAP_S" ] || [ -z "$DEL_S" ]; do
  if [ -z "$CAP_S" ]; then
    ok=$("${PSQL[@]}" -c "SELECT confirmed_flush_lsn >= '$END_LSN' FROM pg_replication_slots WHERE slot_name = 'walhook'")
    [ "$ok" = t ] && CAP_S=$(echo "$(now) - $t0" | bc -l)
  fi
  if [ -z "$DEL_S" ]; then
    got=$(curl -s "http://$SINK_ADDR/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])')
    [ "$got" -ge "$N" ] && DEL_S=$(echo "$(now) - $t0" | bc -l)
  fi
  kill -0 $WPID 2>/dev/null || { echo "walhook exited:" >&2; cat "$WORK/walhook.log" >&2; exit 1; }
  [ "$(date +%s)" -lt $deadline ] || { echo "timeout" >&2; exit 1; }
  sleep 0.05
done
HWM_KB=$(awk '/VmHWM/ {print $2}' /proc/$WPID/status)
STORE_BYTES=$(du -sb "$WORK/store" | cut -f1)
kill -TERM $WPID; wait $WPID || true

rate() { echo "$N / $1" | bc -l | xargs printf '%.0f'; }
RECV_R=$(rate "$RECV_S"); CAP_R=$(rate "$CAP_S"); DEL_R=$(rate "$DEL_S")
ratio() { echo "$1 / $RECV_R" | bc -l | xargs printf '%.2f'; }

mkdir -p bench/results
OUT="bench/results/backlog-$(date +%Y%m%d-%H%M%S).md"
{
  echo "# walhook backlog benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo "N = $N rows inserted in 100-row transactions before the readers start; $(nproc) cores; $("${PSQL[@]}" -c 'SHOW server_version'); Postgres, walhook and the sink share the machine."
  echo
  echo "| reader | seconds | rows/s | × pg_recvlogical |"
  echo "|---|---:|---:|---:|"
  printf '| pg_recvlogical (pgoutput → /dev/null) | %.2f | %s | 1.00 |\n' "$RECV_S" "$RECV_R"
  printf '| walhook capture + durable store (slot confirmed at end) | %.2f | %s | %s |\n' "$CAP_S" "$CAP_R" "$(ratio "$CAP_R")"
  printf '| walhook delivered end to end (1 subscription, 1 POST/event) | %.2f | %s | %s |\n' "$DEL_S" "$DEL_R" "$(ratio "$DEL_R")"
  echo
  echo "walhook times include its start-up (preflight checks, store open). Peak RSS of walhook: $((HWM_KB / 1024)) MB; store size after the run: $((STORE_BYTES / N)) bytes/event."
} | tee "$OUT"
