#!/usr/bin/env bash
# Runs the database-source integration tests against every supported PostgreSQL major
# version (12–18): scripts/test-matrix.sh [MAJOR...]
set -euo pipefail
cd "$(dirname "$0")/.."
majors=("$@"); [ ${#majors[@]} -gt 0 ] || majors=(12 13 14 15 16 17 18)
# The tests of the sources that talk to the database or read its log.
filters=(activity:: exporter:: health:: locks:: logs:: log_prefixes:: not_utf8:: plans:: sampler:: sql_text:: statements:: system:: tls::)
cargo test --test integration --no-run --quiet
failed=()
for m in "${majors[@]}"; do
  bin=$(scripts/pg-bin.sh "$m")
  echo "== PostgreSQL $m ($("$bin/postgres" --version)) from $bin"
  if ! PG_BIN=$bin cargo test --quiet --test integration -- "${filters[@]}"; then
    failed+=("$m")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "matrix: FAILED on PostgreSQL ${failed[*]}"; exit 1
fi
echo "matrix: ok on PostgreSQL ${majors[*]}"
