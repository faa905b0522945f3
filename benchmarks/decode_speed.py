"""Decoding speed and quality of a trained model on a test set: greedy vs beam, batched vs one at a time.

    python benchmarks/decode_speed.py --checkpoint runs/multi30k --data ../shared/data/multi30k \
        [--src test_2016_flickr.de --ref test_2016_flickr.en] [--json out.json]

Prints a table and writes JSON. "one at a time" runs the very same beam search code with
batches of one sentence, on the first --single-sentences sentences (it is slow); the speedup
compares sentences/s measured in this same run.

It also bounds what batching can give: the matrix-multiply FLOPs the batched beam search
performs (counted by ``torch.utils.flop_counter``) divided by the matmul peak measured in
this run is the fastest that search could possibly run on this device, even if everything
else cost nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from speed import matmul_peak  # benchmarks/ is on sys.path when this script runs
from seq2seq_cli.checkpoint import load_model
from seq2seq_cli.data import read_lines
from seq2seq_cli.decoding import translate_corpus
from seq2seq_cli.device import select_device
from seq2seq_cli.evaluation import corpus_bleu


def timed_translate(model, tokenizers, sources, decoding, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    results = translate_corpus(model, tokenizers, sources, decoding, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return tokenizers.decode_tgt([nbest[0].tokens for nbest in results]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    parser.add_argument("--data", type=Path, required=True, help="folder with the test files")
    parser.add_argument("--src", default="test_2016_flickr.de")
    parser.add_argument("--ref", default="test_2016_flickr.en")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--single-sentences", type=int, default=200,
                        help="sentences decoded one at a time for the unbatched baseline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = select_device(args.device)
    model, tokenizers, config = load_model(args.checkpoint, device)
    sources_text, references = read_lines(args.data / args.src), read_lines(args.data / args.ref)
    sources = tokenizers.encode_src(sources_text)
    base = dataclasses.replace(config.decoding, batch_size=args.batch_size)
    greedy = dataclasses.replace(base, beam_size=1)
    beam = dataclasses.replace(base, beam_size=args.beam_size)
    single = dataclasses.replace(beam, batch_size=1)

    translate_corpus(model, tokenizers, sources[:32], beam, device)  # warm-up
    rows = []
    for name, decoding, subset in (("greedy, batched", greedy, sources), (f"beam {args.beam_size}, batched", beam, sources),
                                   (f"beam {args.beam_size}, one at a time", single,
                                    sources[: args.single_sentences])):
        hypotheses, seconds = timed_translate(model, tokenizers, subset, decoding, device)
        bleu = corpus_bleu(hypotheses, references[: len(subset)])
        rows.append({"setting": name, "sentences": len(subset), "seconds": round(seconds, 3),
                     "sentences_per_s": round(len(subset) / seconds, 2), "bleu": round(bleu, 2)})

    greedy_row, beam_row, single_row = rows
    counter = FlopCounterMode(display=False)
    with counter:
        translate_corpus(model, tokenizers, sources, beam, device)
    beam_flops_per_sentence = counter.get_total_flops() / len(sources)
    peak = matmul_peak(device)
    roofline = peak / beam_flops_per_sentence  # sentences/s if only matmuls cost, at peak
    result = {
        "device": str(device), "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "checkpoint": str(args.checkpoint), "rows": rows,
        "batched_beam_speedup": round(beam_row["sentences_per_s"] / single_row["sentences_per_s"], 2),
        "beam_minus_greedy_bleu": round(beam_row["bleu"] - greedy_row["bleu"], 2),
        "beam_matmul_flops_per_sentence": round(beam_flops_per_sentence),
        "matmul_peak_flops_per_s": round(peak),
        "beam_roofline_sentences_per_s": round(roofline, 1),
        "beam_roofline_speedup": round(roofline / single_row["sentences_per_s"], 2),
    }
    print(f"{'setting':<28} {'sentences':>9} {'seconds':>9} {'sent/s':>9} {'BLEU':>7}")
    for row in rows:
        print(f"{row['setting']:<28} {row['sentences']:>9} {row['seconds']:>9.2f} {row['sentences_per_s']:>9.1f} "
              f"{row['bleu']:>7.2f}")
    print(f"batched beam speedup over one at a time: {result['batched_beam_speedup']:.1f}x; "
          f"beam - greedy BLEU: {result['beam_minus_greedy_bleu']:+.2f}  (device {device})")
    print(f"roofline: batched beam does {beam_flops_per_sentence / 1e6:.0f} M matmul FLOPs per sentence; at the "
          f"measured matmul peak of {peak / 1e9:.0f} GFLOP/s it could reach at most {roofline:.0f} sentences/s, "
          f"{result['beam_roofline_speedup']:.1f}x one at a time")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
