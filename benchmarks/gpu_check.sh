#!/usr/bin/env bash
# Everything a lent GPU is for, in one lease (device time is short and a fresh machine is bare):
#   1. a short CUDA training as a gate (nothing else runs if it fails), then tests/test_cuda.py;
#   2. speed.py on CUDA, alone on the GPU, with the torch.compile row;
#   3. variants of configs/multi30k_de_en.yaml (as committed, it is the CPU run's control) trained side by side on the one GPU (each is
#      bound by kernel launches, not by the GPU's arithmetic) for what time is left, each scored
#      by quality.py with the length penalty tuned on val and the last 5 checkpoints averaged;
#      the full test suite runs beside them at low priority;
#   4. the variant with the best val BLEU (never test) is packed for the trip back.
#
#   bash benchmarks/gpu_check.sh DATA_DIR OUT_DIR SECONDS
#
# DATA_DIR holds the Multi30k files, OUT_DIR receives logs, JSON and the winner's checkpoint
# (split in 15 MB parts), SECONDS is the wall-clock budget for the whole script.
#
# Through the device tool (the GPU image has no omegaconf, and ../shared does not travel):
# put the omegaconf and antlr4-python3-runtime wheels in .whl/ and the Multi30k files in
# .m30k/ (both listed in .git/info/exclude), then run, carrying [".whl", ".m30k"]:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site:$PWD; python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .;
#   bash benchmarks/gpu_check.sh .m30k $OUT 585
set -u
data=$(realpath "$1"); out=$2; budget=${3:-585}
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
mkdir -p "$out/logs"
log() { echo "[$(($(date +%s) - start)) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, tokenizers, omegaconf; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, 'omegaconf', omegaconf.__version__)"

log "1. a short CUDA training (the gate: nothing else runs if it fails), then the CUDA tests"
if ! timeout 90 python3 -m seq2seq_cli train --config configs/toy.yaml --run-dir /tmp/gate --overwrite \
        training.device=cuda training.max_steps=40 training.max_epochs=0 training.validate_every=20 \
        >"$out/logs/gate.log" 2>&1; then
    tail -30 "$out/logs/gate.log"
    log "CUDA training failed: stopping here"
    tar -C "$out" -czf "$out/results.tgz" logs
    exit 3
fi
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$out/logs/test_cuda.log" 2>&1
log "CUDA tests: $(tail -1 "$out/logs/test_cuda.log")"

log "2. speed.py on CUDA"
timeout 200 python3 benchmarks/speed.py --data "$data" --device cuda --compile --train-seconds 15 \
    --ref-train-seconds 10 --ref-sentences 100 --json "$out/logs/speed_cuda.json" >"$out/logs/speed_cuda.log" 2>&1 \
    || log "speed.py failed or timed out (exit $?)"

log "3. multi30k_de_en.yaml variants, side by side"
minutes=$(python3 -c "print(round(max(1.0, ($(left) - 150) / 60), 2))")
common="training.max_epochs=60 training.num_threads=2"
loss="training.plateau_metric=loss training.lr_decay_patience=1"
declare -A variants=(
    [loss]="$loss"
    [loss-d03]="$loss model.dropout=0.3"
    [loss-tied]="$loss model.tie_embeddings=output"
    # A GPU step costs about the same at twice the tokens (launch-bound): more data per minute.
    [loss-b4k]="$loss training.batch_tokens=4000 training.learning_rate=0.003"
)
log "training for $minutes min each: ${!variants[*]}"
deadline=$(($(left) - 45))  # a run that overstays is stopped, so the others' results still get packed
for name in "${!variants[@]}"; do
    # shellcheck disable=SC2086  # the overrides are separate words
    timeout "$deadline" python3 benchmarks/quality.py --data "$data" --config configs/multi30k_de_en.yaml --minutes "$minutes" \
        --run-dir "runs/gpu-$name" --average 5 --length-penalties 0.6,1.0,1.4 --json "$out/logs/quality-$name.json" \
        $common ${variants[$name]} >"$out/logs/quality-$name.log" 2>&1 &
done
sleep 20  # the trainings start before the suite takes its cores
S2S_MULTI30K="$data" OMP_NUM_THREADS=2 timeout $(($(left) - 150)) nice -n 19 \
    python3 -m pytest -q -p no:cacheprovider -n 3 >"$out/logs/test_suite.log" 2>&1
log "full suite: $(tail -1 "$out/logs/test_suite.log")"
wait

log "4. results"
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
speed = out / "logs" / "speed_cuda.log"
if speed.exists():
    print("".join(speed.read_text().splitlines(keepends=True)[-9:]))
rows = []
for path in sorted((out / "logs").glob("quality-*.json")):
    result = json.loads(path.read_text())
    name = path.stem.removeprefix("quality-")
    for row in result["checkpoints"]:
        dev = max(row["dev_beam_by_length_penalty"].values())
        rows.append((dev, name, row["checkpoint"], row["tuned_length_penalty"], row["dev_greedy"]["bleu"],
                     row["test_greedy"]["bleu"], row["test_beam"]["bleu"], row["test_beam_tuned"]["bleu"],
                     row["test_beam_tuned"]["chrf"], result.get("steps"), result.get("train_wall_s")))
print(f"{'variant':<10} {'checkpoint':<20} {'steps':>6} {'train s':>7} {'dev greedy':>10} {'dev beam*':>9} "
      f"{'alpha':>5} {'test greedy':>11} {'test beam':>9} {'test beam*':>10} {'chrF*':>6}")
for dev, name, ckpt, alpha, dev_g, test_g, test_b, test_t, chrf, steps, wall in sorted(rows, reverse=True):
    print(f"{name:<10} {ckpt:<20} {steps!s:>6} {wall!s:>7} {dev_g:>10.2f} {dev:>9.2f} {alpha:>5} {test_g:>11.2f} "
          f"{test_b:>9.2f} {test_t:>10.2f} {chrf:>6.2f}")
print("* beam 5 with the length penalty tuned on val; rows sorted by val BLEU, which alone picks the winner")
if rows:
    best = max(rows)
    checkpoint = "averaged.pt" if best[2].startswith("average") else "best.pt"
    (out / "winner.txt").write_text(f"runs/gpu-{best[1]} {checkpoint} alpha={best[3]}\n")
    print("winner:", (out / "winner.txt").read_text().strip())
EOF
if [ -f "$out/winner.txt" ]; then
    read -r run checkpoint _ <"$out/winner.txt"
    mkdir -p "$out/pack/run/checkpoints"
    cp -r "$run/config.yaml" "$run/tokenizer" "$run/metrics.jsonl" "$out/pack/run/"
    cp "$run/checkpoints/$checkpoint" "$out/pack/run/checkpoints/"
    alpha=$(sed 's/.*alpha=//' "$out/winner.txt")
    log "s2s evaluate of the winner on CUDA (beam 5, alpha $alpha):"
    python3 -m seq2seq_cli evaluate --checkpoint "$run/checkpoints/$checkpoint" --src "$data/test_2016_flickr.de" \
        --ref "$data/test_2016_flickr.en" --beam-size 5 --length-penalty "$alpha" --json "$out/logs/winner_evaluate.json" \
        2>"$out/logs/winner_evaluate.err"
    tar -C "$out/pack" -cf - run | split -b 15M - "$out/winner.tar."
    rm -r "$out/pack"
fi
for run in runs/gpu-*; do cp "$run/metrics.jsonl" "$out/logs/metrics-${run#runs/gpu-}.jsonl" 2>/dev/null; done
tar -C "$out" -czf "$out/results.tgz" logs && rm -r "$out/logs"
log "done"
