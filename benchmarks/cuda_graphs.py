"""Training throughput on a GPU: eager steps against steps replayed from CUDA graphs.

    python benchmarks/cuda_graphs.py --data ../shared/data/multi30k [--batch-tokens 2000,4000,8000,16000]
        [--seconds 10] [--json out.json]

Multi30k de->en, the model of speed.py (emb 256 / hidden 256 / joint WordPiece vocabulary of
8000, dropout 0.3). For each batch size, in one run on one card, two fresh copies of the same
model train on the same batches (built per step, as the trainer does):

- eager: the trainer's update (bf16 autocast, fused AdamW, one host sync per step for the
  non-finite check);
- graphed: ``graphs.GraphedSteps``, as the trainer runs it with ``training.cuda_graphs=auto``
  (the step's outcome read one step later). One epoch first captures every shape (its time is
  reported as warm-up), then the timed steps.

Tokens/s count real target tokens (not padding). MFU uses speed.py's model FLOPs per target
token and the bf16 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from seq2seq_cli.config import ModelConfig, TokenizerConfig, TrainingConfig
from seq2seq_cli.data import TokenBatches, filter_pairs, read_parallel, tokenize_corpus
from seq2seq_cli.device import select_device
from seq2seq_cli.precision import autocast
from seq2seq_cli.graphs import GraphedSteps
from seq2seq_cli.loss import sequence_loss
from seq2seq_cli.model import build_model
from seq2seq_cli.tokenization import build_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import flops_per_target_token, matmul_peak  # noqa: E402


def fresh(config: ModelConfig, tokenizers, device):
    torch.manual_seed(1)
    model = build_model(config, tokenizers.src_size, tokenizers.tgt_size, tokenizers.pad_id).to(device).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)


def eager_step(model, optimizer, batch, pad_id: int, device) -> None:
    """Trainer.update: forward, loss, backward, clip, a host read of (finite, loss), AdamW."""
    with autocast(device):
        logits = model(batch.src_ids, batch.src_lengths, batch.tgt_in)
        loss = sequence_loss(logits, batch.tgt_out, pad_id, 0.1)
    optimizer.zero_grad(set_to_none=True)
    (loss / batch.n_tgt_tokens).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    finite, _ = torch.stack([torch.isfinite(norm).float(), loss.detach().float()]).tolist()
    if finite:
        optimizer.step()


def timed(run_one, batches: TokenBatches, seconds: float, device, first_epoch: int = 1) -> tuple[float, int]:
    """Steps over epochs ``first_epoch``, ... for about ``seconds``: (real target tokens/s, steps)."""
    torch.cuda.synchronize(device)
    tokens, steps, epoch, started = 0, 0, first_epoch, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for indices in batches.epoch_batches(epoch):
            batch = batches.make_batch(indices)
            run_one(batch)
            tokens += batch.n_tgt_tokens
            steps += 1
            if time.perf_counter() - started >= seconds:
                break
        epoch += 1
    torch.cuda.synchronize(device)
    return tokens / (time.perf_counter() - started), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-tokens", default="2000,4000,8000,16000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = select_device(args.device)
    if device.type != "cuda":
        raise SystemExit("cuda_graphs.py needs a CUDA device")

    src_lines, tgt_lines = read_parallel(args.data / "train.de", args.data / "train.en")
    tokenizers = build_tokenizers(TokenizerConfig(vocab_size=8000), src_lines, tgt_lines)
    corpus, _, _ = filter_pairs(tokenize_corpus(tokenizers, str(args.data / "train.de"), str(args.data / "train.en")), 100)
    config = ModelConfig(embed_dim=256, hidden_size=256, dropout=0.3, output_dim=256)
    src_per_tgt = sum(len(s) + 1 for s in corpus.src_ids) / sum(len(t) + 1 for t in corpus.tgt_ids)
    attended = sum((len(s) + 1) * (len(t) + 1) for s, t in zip(corpus.src_ids, corpus.tgt_ids)) / sum(
        len(t) + 1 for t in corpus.tgt_ids)
    flops = flops_per_target_token(config, tokenizers.tgt_size, src_per_tgt, attended)
    peak = matmul_peak(device)

    rows = []
    for batch_tokens in map(int, args.batch_tokens.split(",")):
        batches = TokenBatches(corpus, tokenizers, batch_tokens, seed=1)
        model, optimizer = fresh(config, tokenizers, device)
        for indices in batches.epoch_batches(0)[:3]:
            eager_step(model, optimizer, batches.make_batch(indices).to(device), tokenizers.pad_id, device)
        eager_tps, eager_steps = timed(
            lambda b: eager_step(model, optimizer, b.to(device), tokenizers.pad_id, device), batches, args.seconds, device)

        model, optimizer = fresh(config, tokenizers, device)
        graphed = GraphedSteps(model, optimizer, TrainingConfig(batch_tokens=batch_tokens), tokenizers, device)
        pending = []

        def graphed_step(batch):
            pending.append(graphed.launch(batch, 1e-3))
            if len(pending) == 2:  # read the previous step while this one runs, as the trainer does
                pending.pop(0).loss()

        torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for indices in batches.epoch_batches(0):
            graphed_step(batches.make_batch(indices))
        torch.cuda.synchronize(device)
        warmup_s = time.perf_counter() - started
        graphed_tps, graphed_steps = timed(graphed_step, batches, args.seconds, device)
        losses = [p.loss() for p in pending]
        row = {"batch_tokens": batch_tokens, "eager_tokens_per_s": round(eager_tps), "eager_steps": eager_steps,
               "graphed_tokens_per_s": round(graphed_tps), "graphed_steps": graphed_steps,
               "speedup": round(graphed_tps / eager_tps, 2), "shapes": len(graphed.graphs),
               "capture_epoch_s": round(warmup_s, 1), "graphed_mfu": round(flops * graphed_tps / peak, 4),
               "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20),
               "last_loss_finite": all(loss is not None and math.isfinite(loss) for loss in losses)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        graphed = model = optimizer = None  # frees this size's memory; rebound, not deleted: the closures above read them
        torch.cuda.empty_cache()

    print(f"\n{torch.cuda.get_device_name(device)}, torch {torch.__version__}; model emb 256 / hidden 256 / "
          f"vocab {tokenizers.tgt_size}; {flops / 1e6:.1f} MFLOP per target token; bf16 matmul peak "
          f"{peak / 1e12:.0f} TFLOP/s")
    print(f"{'batch tokens':>12} {'eager tok/s':>12} {'graphed tok/s':>14} {'speedup':>8} {'shapes':>7} "
          f"{'capture s':>9} {'MFU':>6} {'CUDA MB':>8}")
    for r in rows:
        print(f"{r['batch_tokens']:>12} {r['eager_tokens_per_s']:>12,} {r['graphed_tokens_per_s']:>14,} "
              f"{r['speedup']:>7.2f}x {r['shapes']:>7} {r['capture_epoch_s']:>9} {r['graphed_mfu']:>6.1%} "
              f"{r['peak_cuda_mb']:>8,}")
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                                         "flops_per_target_token": round(flops), "matmul_peak": round(peak),
                                         "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
