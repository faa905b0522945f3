#!/usr/bin/env bash
# Everything a lent GPU is for, in one lease (device time is short and a fresh machine is bare):
#   1. a short CUDA training with graphs as a gate (nothing else runs if it fails), then
#      tests/test_cuda.py;
#   2. cuda_graphs.py: eager vs graphed training tokens/s at 2k-16k-token batches;
#   3. configs/multi30k_de_en.yaml trained with CUDA graphs (the default on CUDA) for what time
#      is left, scored by quality.py like the eager run in benchmarks/README.md (beam 5, length
#      penalty tuned on val, last 5 checkpoints averaged); the full test suite runs beside it
#      at low priority;
#   4. search_graphs.py on that model: eager vs graphed search (decoding.cuda_graphs),
#      greedy and beam 5 on test2016 (on the gate's toy model if step 3 saved none in time).
#
#   bash benchmarks/gpu_check.sh DATA_DIR OUT_DIR SECONDS
#
# DATA_DIR holds the Multi30k files, OUT_DIR receives logs and JSON, SECONDS is the
# wall-clock budget for the whole script.
#
# Through the device tool (the GPU image has no omegaconf, and ../shared does not travel):
# put the omegaconf and antlr4-python3-runtime wheels in .whl/ and the Multi30k files in
# .m30k/ (both listed in .git/info/exclude), then run, carrying [".whl", ".m30k"]:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site:$PWD; bash benchmarks/gpu_check.sh .m30k $OUT 540
set -u
data=$(realpath "$1"); out=$2; budget=${3:-540}
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
upto() { local n=$(($(left) - $1)); echo $((n > 10 ? n : 10)); }  # seconds left but $1, at least 10
mkdir -p "$out/logs"
log() { echo "[$(($(date +%s) - start)) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, tokenizers, omegaconf; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, 'omegaconf', omegaconf.__version__)"

log "1. a short CUDA training with graphs (the gate), then the CUDA tests"
if ! timeout 90 python3 -m seq2seq_cli train --config configs/toy.yaml --run-dir /tmp/gate --overwrite \
        training.device=cuda training.max_steps=60 training.max_epochs=0 training.validate_every=30 \
        >"$out/logs/gate.log" 2>&1; then
    tail -30 "$out/logs/gate.log"
    log "CUDA training failed: stopping here"
    exit 3
fi
grep -E "cuda_graphs|tokens_per_s" /tmp/gate/metrics.jsonl | head -3 | cut -c1-300
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$out/logs/test_cuda.log" 2>&1
log "CUDA tests: $(tail -1 "$out/logs/test_cuda.log")"
grep -E "^(FAILED|ERROR)|Error|assert" "$out/logs/test_cuda.log" | head -20

log "2. cuda_graphs.py"
timeout 170 python3 benchmarks/cuda_graphs.py --data "$data" --seconds 6 --json "$out/logs/cuda_graphs.json" \
    >"$out/logs/cuda_graphs.log" 2>&1 || log "cuda_graphs.py failed or timed out (exit $?)"
tail -8 "$out/logs/cuda_graphs.log"

log "3. multi30k_de_en.yaml with CUDA graphs, the suite beside it"
minutes=$(python3 -c "print(round(max(0.5, ($(left) - 165) / 60), 2))")
log "training for $minutes min"
timeout $(upto 100) python3 benchmarks/quality.py --data "$data" --config configs/multi30k_de_en.yaml \
    --minutes "$minutes" --run-dir runs/gpu-graphs --average 5 --length-penalties 0.6,1.0,1.4 \
    --json "$out/logs/quality-graphs.json" >"$out/logs/quality-graphs.log" 2>&1 &
sleep 15  # the training starts before the suite takes its cores
S2S_MULTI30K="$data" OMP_NUM_THREADS=2 timeout $(upto 150) nice -n 19 \
    python3 -m pytest -q -p no:cacheprovider -n 3 >"$out/logs/test_suite.log" 2>&1
log "full suite: $(tail -1 "$out/logs/test_suite.log")"
wait
cp runs/gpu-graphs/metrics.jsonl "$out/logs/metrics-graphs.jsonl" 2>/dev/null
tail -25 "$out/logs/quality-graphs.log"

log "4. search_graphs.py"
# On the Multi30k model if step 3 saved one in time, else on the gate's toy model.
test_set=(--checkpoint runs/gpu-graphs --data "$data")
if [ ! -f runs/gpu-graphs/checkpoints/best.pt ]; then
    log "no Multi30k checkpoint: measuring on the gate's toy model"
    test_set=(--checkpoint /tmp/gate --data data/toy --src test.en --ref test.de)
fi
timeout $(upto 5) python3 benchmarks/search_graphs.py "${test_set[@]}" \
    --json "$out/logs/search_graphs.json" >"$out/logs/search_graphs.log" 2>&1 || log "search_graphs.py failed (exit $?)"
tail -6 "$out/logs/search_graphs.log"
log "done"
