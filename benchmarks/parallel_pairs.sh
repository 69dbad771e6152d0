#!/bin/sh
# Wall time of the same suite with -n 1 and -n 2 over two host pairs (inventory/local-lab-2pairs.yaml),
# and ping-pong migrations per minute on one pair. Root; nothing else may use the lab meanwhile.
# Usage: benchmarks/parallel_pairs.sh [round-trips]    (prints one JSON document)
# KEEP_REPORTS=1 keeps the runs' report dirs (e.g. for benchmarks/downtime_stats.py).
set -eu
cd "$(dirname "$0")/.."
trips=${1:-5}
inv=inventory/local-lab-2pairs.yaml
out=$(mktemp -d)
.venv/bin/mdevtest lab up --inventory "$inv" >/dev/null
t() { s=$(date +%s.%N); "$@" >"$out/log" 2>&1 || { tail -30 "$out/log" >&2; exit 1; }; e=$(date +%s.%N); python3 -c "print($e - $s)"; }
n1=$(t .venv/bin/pytest suites/test_migration_basic.py --inventory "$inv" -p no:cacheprovider -q \
      --mdevtest-report-dir "$out/n1" --mdevtest-keep-lab -n 1)
n2=$(t .venv/bin/pytest suites/test_migration_basic.py --inventory "$inv" -p no:cacheprovider -q \
      --mdevtest-report-dir "$out/n2" --mdevtest-keep-lab -n 2 --dist loadgroup)
pp=$(t .venv/bin/pytest suites/test_ping_pong.py --inventory "$inv" -p no:cacheprovider -q \
      --mdevtest-report-dir "$out/pp" --mdevtest-keep-lab --mdevtest-pairs 'host-a->host-b' \
      --mdevtest-round-trips "$trips")
migrations=$(python3 -c "import json;print(len(json.load(open('$out/pp/summary.json'))['migrations']))")
python3 - "$n1" "$n2" "$pp" "$migrations" <<'PY'
import json, sys
n1, n2, pp, m = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print(json.dumps({
    "basic_suite_4_tests_n1_s": round(n1, 1),
    "basic_suite_4_tests_n2_s": round(n2, 1),
    "speedup": round(n1 / n2, 2),
    "ping_pong_migrations": m,
    "ping_pong_wall_s": round(pp, 1),
    "ping_pong_migrations_per_minute_incl_boot_and_checks": round(m / pp * 60, 1),
}, indent=2))
PY
if [ -n "${KEEP_REPORTS:-}" ]; then
  echo "reports kept in $out (ping-pong summary: $out/pp/summary.json)" >&2
else
  rm -rf "$out"
fi
