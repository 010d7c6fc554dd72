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
  python3 -m venv --help >/dev/null 2>&1 ||
    { echo "otlp-python.sh: python3's venv module is missing (Debian package python3-venv)" >&2; exit 69; }
  python3 -m venv "$venv" >&2 ||
    { echo "otlp-python.sh: python3 -m venv failed (Debian package python3-venv)" >&2; exit 69; }
  "$venv/bin/pip" install -q --disable-pip-version-check "opentelemetry-proto==$version" >&2 ||
    { echo "otlp-python.sh: pip could not install opentelemetry-proto==$version: the OTLP tests need PyPI (or a mirror in pip.conf)" >&2; exit 69; }
  "$venv/bin/python" -c 'import opentelemetry.proto.collector.logs.v1.logs_service_pb2' >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
