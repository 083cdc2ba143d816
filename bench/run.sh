#!/usr/bin/env bash
# All benchmarks, one after the other (speed first, on a quiet machine): writes bench/results/*.md and *.png.
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/speed.py --threads 1
python bench/quality.py --fresh --workers 2
