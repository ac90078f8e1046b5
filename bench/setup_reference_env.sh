#!/usr/bin/env bash
# Create .bench-venv-trl112/: trl 1.12.0 (the last release with PPOTrainer) for the side-by-side benchmark only.
# The product never imports it. Idempotent: a marker holding a copy of the constraints is written last, so a
# complete venv built from the same constraints is kept, and a partial or outdated one is rebuilt.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.bench-venv-trl112"
constraints="$root/bench/reference-constraints.txt"
marker="$venv/.bench-complete"
python="${PYTHON:-python3}"

if [[ -f "$marker" ]] && cmp -s "$constraints" "$marker"; then
    echo "reference venv ready: $venv"
    exit 0
fi

echo "creating the trl 1.12.0 reference venv in $venv (a few minutes)"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "trl[peft]==1.12.0" "torch==2.13.0" -c "$constraints"
TRL_EXPERIMENTAL_SILENCE=1 "$venv/bin/python" - <<'PY'
from importlib import metadata

from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401  (fails here rather than mid-benchmark)

assert metadata.version("trl") == "1.12.0", metadata.version("trl")
PY
cp "$constraints" "$marker"
echo "reference venv ready: $venv"
