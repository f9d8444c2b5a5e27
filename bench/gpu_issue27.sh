#!/usr/bin/env bash
# Issue 27's GPU rows in one device run (BENCHMARKS.md, "GPU" and "Scaling out"): the
# llama31-8b-sft preset, llama31-8b-sft-80gb, ZeRO-2 and FSDP (1 process each under torchrun).
# Needs, in .whl/ (ignored; carried to the machine, ~28 MB): cp312 manylinux wheels of
# transformers 5.23.0, peft 0.21.2, trl 1.16.0, bitsandbytes 0.50.2 (repacked with only its
# libbitsandbytes_cuda130.so and _cpu.so: 43 MB -> 3.6 MB), datasets 5.2.0, dill 0.4.1,
# multiprocess 0.70.19, pydantic 2.14.3, pydantic_core 2.50.4, annotated-types 0.8.0,
# typing-inspection 0.4.5, ruamel.yaml 0.19.1, hjson 3.1.0, deepspeed 0.19.8 (built here:
# DS_BUILD_OPS=0 pip wheel --no-deps deepspeed==0.19.8), and SmolLM2's tokenizer files in
# .whl/tok. Writes $OUT/gpu_results.json (copied as it grows), $OUT/log.txt, $OUT/device.txt.
set -o pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/gb
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|trl|bitsandbytes|datasets|accelerate|deepspeed|pyarrow|fsspec|huggingface.hub|tokenizers|vllm) '
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
# the results so far reach $OUT even if the device tool's limit stops the run
(while sleep 5; do cp /tmp/gb/gpu_results.json "$OUT/" 2>/dev/null; done) >/dev/null 2>&1 &
copier=$!
# RECIPES and TIMEOUT (seconds per recipe) may be set by the caller
# shellcheck disable=SC2086
python3 bench/gpu_bench.py --out /tmp/gb --tokenizer .whl/tok --no-predict \
    --recipes ${RECIPES:-project zero2 fsdp project-80gb} --timeout "${TIMEOUT:-110}" 2>&1 \
    | tee "$OUT/log.txt"
rc=$?
kill "$copier"
cp /tmp/gb/gpu_results.json "$OUT/" 2>/dev/null
exit $rc
