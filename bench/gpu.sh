#!/usr/bin/env bash
# The device checks, as one prepared run on a machine with a CUDA GPU: the notebooks' CUDA cells (and the slow ones),
# the test suite, the GPU benchmark (writes bench/results/gpu.md), then LSUV on an FSDP2-sharded model (NCCL).
# About 5-8 minutes on one H200.
# The machine needs this project's dependencies (pip install -e ".[dev]"). Without network, carry them as wheels in
# .whl/ (see the device tool's README) : they are installed from there first.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD; fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
rc=0
timeout 240 nbdev-test --flags "slow cuda" --n-workers 1 || rc=1
timeout 240 python3 -m pytest -q -x tests/test_device_path.py tests/test_model_zoo.py || rc=1
timeout 300 python3 bench/gpu.py || rc=1
# FSDP2 on CUDA with NCCL (one process per GPU): lsuv_init after fully_shard, the meta-device recipe
timeout 180 python3 -m torch.distributed.run --nproc_per_node="$(python3 -c 'import torch; print(torch.cuda.device_count())')" bench/fsdp_cuda.py || rc=1
exit $rc
