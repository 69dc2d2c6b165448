#!/usr/bin/env bash
# Install everything the tests need, then lint, type-check and run the whole suite with the
# real tools (mosquitto, IPVS in the micro-VM where the kernel lacks it, the local lab).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy workloads infra tests __main__.py
echo "== lint-imports"; .venv/bin/lint-imports
echo "== pytest"
# the slowest tests, so a suite that grows past its time budget says where
exec .venv/bin/python -m pytest -ra --durations=25 "$@"
