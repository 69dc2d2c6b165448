#!/usr/bin/env bash
# Mutation testing of the pure core (configuration, scenario, plan, renderers, run directory,
# histogram, the bench's saturation verdict, analysis metrics): mutmut plants one small bug at a time (an operator, a constant, a
# dropped argument) and runs the fast tests that reach the changed function; a mutant no test
# notices "survived". Prints the kill score and the survivors, and fails below MIN_SCORE (85 %).
# What is mutated and which tests run: [tool.mutmut] in pyproject.toml.
#   ./scripts/mutation.sh                 # the whole run (results are cached in mutants/)
#   FRESH=1 ./scripts/mutation.sh         # start over
#   .venv/bin/mutmut show <mutant>        # the diff of one survivor
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_SCORE=${MIN_SCORE:-85}
BIN=.venv/bin
[ -x "$BIN/mutmut" ] || { echo "mutmut missing: run ./scripts/setup.sh --dev (or .venv/bin/pip install -e '.[dev]')" >&2; exit 3; }
[ -z "${FRESH:-}" ] || rm -rf mutants
# mutmut redraws one progress line; keep every 500th mutant and the last line
"$BIN/mutmut" run --max-children "${JOBS:-$(nproc)}" | tr '\r' '\n' | awk '/[0-9]+\/[0-9]+/ { last = $0; if (++n % 500 == 0) print; fflush() } END { print last }'
"$BIN/mutmut" export-cicd-stats >/dev/null
"$BIN/python" - "$MIN_SCORE" <<'PY'
import json
import subprocess
import sys

stats = json.load(open("mutants/mutmut-cicd-stats.json"))
killed = stats["killed"] + stats.get("timeout", 0)
total = stats["total"] - stats.get("skipped", 0)
score = 100.0 * killed / total if total else 0.0
survivors = subprocess.run([".venv/bin/mutmut", "results"], capture_output=True, text=True).stdout.split("\n")
survivors = [line.strip() for line in survivors if line.strip() and not line.strip().endswith(": killed")]
print("\n".join(survivors))
print(f"mutants {total}  killed {killed}  survived {stats['survived']}  no tests {stats.get('no_tests', 0)}  "
      f"suspicious {stats.get('suspicious', 0)}  score {score:.1f} %")
sys.exit(0 if score >= float(sys.argv[1]) else 1)
PY
