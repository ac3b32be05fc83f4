#!/usr/bin/env bash
# Writes the seed inputs of every fuzz target into OUT_DIR/<target>/, from a
# throwaway PostgreSQL (wal_level = logical) and the files of this directory:
#   fuzz/seeds/make-seeds.sh 'postgres://postgres@127.0.0.1:5432/postgres' OUT_DIR
# then minimize them into the committed corpus (see fuzz/README.md).
set -euo pipefail
url=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
"$here/capture-pgoutput.sh" "$url" "$out"

mkdir -p "$out/value" "$out/config" "$out/template"
n=0
while IFS=$'\x1f' read -r -d $'\x1e' i v; do
    n=$((n + 1))
    { printf "\\x$(printf '%02x' "$i")"; printf '%s' "$v"; } >"$out/value/$(printf '%03d' $n)"
    # The same text with the numbers mode bit set.
    { printf "\\x$(printf '%02x' $((i + 128)))"; printf '%s' "$v"; } >"$out/value/$(printf '%03d' $n)-s"
done < <(psql "$url" -qAt -F $'\x1f' -R $'\x1e' -v ON_ERROR_STOP=1 -f "$here/values.sql"; printf '\x1e')

cp "$root/config.example.toml" "$out/config/example.toml"
cp "$here"/config/*.toml "$out/config/"
# Template seeds: a flags byte (format, batch, content-type, one event),
# then filter NUL body template NUL header value.
t=0
seed_template() {
    t=$((t + 1))
    printf "%b" "$1" >"$out/template/$(printf '%03d' $t)"
}
seed_template '\x00data.total > 100 and data.status != '"'"'draft'"'"'\x00\x00Bearer {{ data.id }}'
seed_template '\x02op == "data_update"\x00{"msgtype":"text","text":{"content":"{{ data.name }} changed: {{ changed|join(\x27, \x27) }}"}}\x00{{ form }}'
seed_template '\x06\x00{"items":[{% for e in events %}{{ e.data|tojson }}{% if not loop.last %},{% endif %}{% endfor %}]}\x00'
seed_template '\x0a\x00{{ data.meta.k[1].x }} {{ data.big * 2 }} {{ data.tiny }} {{ source.commit_time }}\x00'
seed_template '\x12\x00{% for i in range(100000) %}{{ i }}{% endfor %}\x00'
seed_template '\x01data.missing == "x" or "status" in changed\x00\x00{{ data.name|upper }}'
seed_template '\x05data.total|float > 1e3\x00\x00'
seed_template '\x02\x00{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}\x00'
echo "wrote $n value seeds and the config and template seeds into $out"
