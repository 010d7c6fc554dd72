#!/usr/bin/env bash
# Prints a Python that can decode OTLP with the official definitions (PyPI's
# opentelemetry-proto), making it first if needed: a venv cached outside the repo in
# $PGAGENT_PG_CACHE (default /var/cache/postgres-agent-tests when root, else
# ~/.cache/postgres-agent-tests). The OTLP integration tests' receiver runs on it.
set -euo pipefail
version=1.45.2
if [ "$(id -u)" = 0 ]; then default=/var/cache/postgres-agent-tests; else default=$HOME/.cache/postgres-agent-tests; fi
cache=${PGAGENT_PG_CACHE:-$default}
venv=$cache/otlp-venv-$version
mkdir -p "$cache"
# Test processes run in parallel ask at once: one builds, the others wait for it.
exec 9>"$cache/.lock-otlp-$version"
flock 9
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "opentelemetry-proto==$version" >&2
  "$venv/bin/python" -c 'import opentelemetry.proto.collector.logs.v1.logs_service_pb2' >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
