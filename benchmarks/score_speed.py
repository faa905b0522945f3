"""Forced-decoding speed (``s2s score``) of a trained model on a test set, beside greedy decoding
of the same sources, and how well scores tell real translations from mismatched ones.

    python benchmarks/score_speed.py --checkpoint runs/multi30k --data ../shared/data/multi30k \
        [--src test_2016_flickr.de --ref test_2016_flickr.en] [--json out.json]

Prints a table and writes JSON. Scoring reads each reference token by token through the
decoder step search uses; greedy search takes as many steps, each also choosing a token and
dropping finished sentences. The two take turns, --repeats times, and each row keeps its
fastest pass, so that a slow spell of a shared machine hits both alike. The last lines say
how often a reference scores higher per token than the reference of another sentence (the
test of a corpus filter), and the references' perplexity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import random
from pathlib import Path

import torch

from decode_speed import add_model_and_test_set, timed, timed_translate  # benchmarks/ is on sys.path when this runs
from seq2seq_cli.checkpoint import load_model
from seq2seq_cli.data import read_lines
from seq2seq_cli.decoding import SpecialIds
from seq2seq_cli.device import select_device
from seq2seq_cli.scoring import score_ids


def per_token(scores: list[list[float]]) -> list[float]:
    return [sum(row) / len(row) for row in scores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_test_set(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row; the fastest counts")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = select_device(args.device)
    model, tokenizers, config = load_model(args.checkpoint, device)
    model.eval()
    ids = SpecialIds.of(tokenizers)
    sources = tokenizers.encode_src(read_lines(args.data / args.src), config.data.max_len)
    sources = [source[: config.data.max_len] for source in sources]
    references = tokenizers.encode_tgt(read_lines(args.data / args.ref))
    greedy = dataclasses.replace(config.decoding, beam_size=1, batch_size=args.batch_size)
    target_tokens = sum(len(t) + 1 for t in references)

    def score_references():
        return score_ids(model, sources, references, ids, device, args.batch_size)

    score_references()  # warm-up
    score_seconds, greedy_seconds = [], []
    for _ in range(args.repeats):
        scores, seconds = timed(device, score_references)
        score_seconds.append(seconds)
        _, seconds = timed_translate(model, tokenizers, sources, greedy, device)
        greedy_seconds.append(seconds)

    shuffled = references[1:] + references[:1]  # each source with the next sentence's reference
    mismatched = score_ids(model, sources, shuffled, ids, device, args.batch_size)
    rng = random.Random(0)
    noisy = [rng.sample(t, len(t)) for t in references]  # each reference's tokens in a random order
    scrambled = score_ids(model, sources, noisy, ids, device, args.batch_size)
    real = per_token(scores)
    cross_entropy = -sum(map(sum, scores)) / target_tokens
    rows = [{"setting": "score references", "pairs": len(sources), "seconds": round(min(score_seconds), 3),
             "pairs_per_s": round(len(sources) / min(score_seconds), 1),
             "target_tokens_per_s": round(target_tokens / min(score_seconds))},
            {"setting": "greedy search", "pairs": len(sources), "seconds": round(min(greedy_seconds), 3),
             "pairs_per_s": round(len(sources) / min(greedy_seconds), 1)}]
    result = {
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "checkpoint": str(args.checkpoint),
        "batch_size": args.batch_size, "rows": rows,
        "score_speedup_vs_greedy": round(min(greedy_seconds) / min(score_seconds), 2),
        "reference_cross_entropy": round(cross_entropy, 4), "reference_perplexity": round(math.exp(cross_entropy), 3),
        "real_above_mismatched": round(sum(r > m for r, m in zip(real, per_token(mismatched))) / len(real), 4),
        "real_above_scrambled": round(sum(r > s for r, s in zip(real, per_token(scrambled))) / len(real), 4),
    }
    print(f"{'setting':<18} {'pairs':>6} {'seconds':>8} {'pairs/s':>8} {'tgt tok/s':>10}")
    for row in rows:
        print(f"{row['setting']:<18} {row['pairs']:>6} {row['seconds']:>8.2f} {row['pairs_per_s']:>8.1f} "
              f"{row.get('target_tokens_per_s', ''):>10}")
    print(f"scoring is {result['score_speedup_vs_greedy']:.2f}x greedy search's speed  (device {device}, "
          f"batch {args.batch_size})")
    print(f"references: {cross_entropy:.4f} nats per token, perplexity {result['reference_perplexity']:.3f}; "
          f"a reference scores above another sentence's for {100 * result['real_above_mismatched']:.1f}% of "
          f"sources, above its own tokens shuffled for {100 * result['real_above_scrambled']:.1f}%")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
