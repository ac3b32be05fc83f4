#!/usr/bin/env bash
# Regenerates the pgoutput seeds from a real server: runs pgoutput.sql on a
# throwaway database (dropped slot, publication and origin afterwards) and
# writes every message the slot decodes (protocol version 1, messages on).
#   fuzz/seeds/capture-pgoutput.sh 'postgres://postgres@127.0.0.1:5432/postgres' OUT_DIR
# OUT_DIR/pgoutput/ gets one message per file; OUT_DIR/pgoutput_stream/ one
# file per transaction (2-byte big-endian length before each message).
set -euo pipefail
url=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
db=walhook_fuzz_seed
psql "$url" -qAt -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
dburl=$(printf '%s' "$url" | sed -E "s#/[^/?]*(\?|$)#/$db\1#")
psql "$dburl" -qAt -v ON_ERROR_STOP=1 -f "$here/pgoutput.sql" >/dev/null
mkdir -p "$out/pgoutput" "$out/pgoutput_stream"
n=0
stream=""
while IFS='|' read -r hex; do
    hex=${hex#\\x}
    n=$((n + 1))
    tag=$(printf '%s' "${hex:0:2}" | xxd -r -p)
    printf '%s' "$hex" | xxd -r -p >"$out/pgoutput/$(printf '%03d' $n)-$tag"
    len=$(( ${#hex} / 2 ))
    if [ "$len" -lt 65536 ]; then
        stream+=$(printf '%04x' "$len")$hex
    fi
    if [ "$tag" = C ]; then
        printf '%s' "$stream" | xxd -r -p >"$out/pgoutput_stream/$(printf '%03d' $n)-tx"
        stream=""
    fi
done < <(psql "$dburl" -qAt -v ON_ERROR_STOP=1 -c \
    "SELECT data FROM pg_logical_slot_peek_binary_changes('fuzz_seed', NULL, NULL,
        'proto_version', '1', 'publication_names', 'fuzz_seed', 'messages', 'true')")
psql "$dburl" -qAt -c "SELECT pg_drop_replication_slot('fuzz_seed')" \
    -c "SELECT pg_replication_origin_drop('node_a')" >/dev/null
psql "$url" -qAt -c "DROP DATABASE $db" >/dev/null
echo "captured $n pgoutput messages into $out"
