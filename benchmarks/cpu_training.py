"""Training steps on the CPU: fp32 against bf16, the loss from the logits against the loss without them.

    python benchmarks/cpu_training.py --data ../shared/data/multi30k [--batches 40] [--rounds 3] [--json out.json]

`configs/multi30k_cpu.yaml`'s model and batches (emb/hidden/output 256, tied output layer,
dropout 0.1, 2,000-token length-bucketed batches, label smoothing 0.1, AdamW) on the first
--batches batches of a Multi30k epoch. Four ways of taking a step, each a whole update:
``fp32`` and ``bf16`` (autocast, ``training.precision=bf16``), each with the loss from the logits
(``sequence_loss``, what the trainer did before, and what a GPU runs) and from the model given
the targets (what the trainer does now: on the CPU without holding the logits).

Every way first runs once over all the batches (oneDNN builds its bf16 kernels per shape), then
the ways take turns for --rounds rounds on the same batches, so each comparison is between
passes minutes apart at most: this machine's speed drifts by a third within minutes. One model
and optimizer carry on through all of it (the weights change, the work per step does not).
Reports seconds per pass, the median of the rounds, and each way's speed against fp32 from the
logits.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from seq2seq_cli.config import ModelConfig
from seq2seq_cli.data import TokenBatches
from seq2seq_cli.model import build_model
from seq2seq_cli.precision import cpu_computes_bf16

from speed import multi30k_training_corpus, training_step  # benchmarks/ is on sys.path when this script runs

# bf16 only where the CPU has bf16 arithmetic: elsewhere s2s refuses it (seq2seq_cli.precision).
WAYS = [(precision, loss_from) for precision in ("fp32", "bf16") for loss_from in ("logits", "model")
        if precision == "fp32" or cpu_computes_bf16()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.batches < 1 or args.rounds < 1:
        parser.error("--batches and --rounds must be at least 1")

    tokenizers, corpus = multi30k_training_corpus(args.data, max_len=80)
    token_batches = TokenBatches(corpus, tokenizers, 2000, shuffle=True, seed=42)
    batches = [token_batches.make_batch(indices) for indices in token_batches.epoch_batches(0)[:args.batches]]
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=256, hidden_size=256, output_dim=256, dropout=0.1, tie_embeddings="output")
    model = build_model(config, tokenizers.src_size, tokenizers.tgt_size, tokenizers.pad_id).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    steps = {(precision, loss_from): training_step(model, optimizer, tokenizers.pad_id, torch.device("cpu"), precision,
                                                   loss_from_model=loss_from == "model")
             for precision, loss_from in WAYS}

    def one_pass(precision: str, loss_from: str) -> float:
        started = time.perf_counter()
        for batch in batches:
            steps[(precision, loss_from)](batch)
        return time.perf_counter() - started

    for way in WAYS:
        one_pass(*way)
    seconds = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            seconds[way].append(one_pass(*way))
    median = {way: statistics.median(seconds[way]) for way in WAYS}
    tokens = sum(batch.n_tgt_tokens for batch in batches)
    rows = [{"precision": precision, "loss_from": loss_from, "seconds": [round(s, 2) for s in seconds[(precision, loss_from)]],
             "median_s": round(median[(precision, loss_from)], 2),
             "tokens_per_s": round(tokens / median[(precision, loss_from)], 1),
             "speedup": round(median[WAYS[0]] / median[(precision, loss_from)], 3)}
            for precision, loss_from in WAYS]
    print(f"{len(batches)} batches, {tokens} target tokens per pass, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| precision | loss from | seconds per pass (rounds) | median | target tokens/s | vs fp32 from logits |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['precision']} | {row['loss_from']} | {', '.join(f'{s:.1f}' for s in row['seconds'])} | "
              f"{row['median_s']:.1f} | {row['tokens_per_s']:,.0f} | {row['speedup']:.2f}x |")
    if args.json:
        result = {"batches": len(batches), "tokens_per_pass": tokens, "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "machine": platform.machine(), "rows": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
