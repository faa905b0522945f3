"""Search with decoder steps replayed from CUDA graphs (``decoding.cuda_graphs``) against the
eager search, on a trained model and a test set: sentences/s, BLEU and how many translations
are the same, greedy and beam.

    python benchmarks/search_graphs.py --checkpoint runs/multi30k --data ../shared/data/multi30k \
        [--src test_2016_flickr.de --ref test_2016_flickr.en] [--beam-size 5] [--json out.json]

On CUDA the fixed-shape searches replay CUDA graphs; elsewhere the same fixed-shape searches
run their steps as they are (finished sentences kept in the batch, so slower than eager
search there), which checks that they translate as the eager search does at a real size.
Both ways decode one batch at a time (on the CPU on one thread). The first graphed pass
records each batch shape's graph and is timed on its own; each row keeps the fastest of
--repeats passes, the two ways taking turns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from decode_speed import add_model_and_test_set  # benchmarks/ is on sys.path when this script runs
from seq2seq_cli.checkpoint import load_model
from seq2seq_cli.data import read_lines
from seq2seq_cli.decoding import SpecialIds, translate_corpus
from seq2seq_cli.device import select_device
from seq2seq_cli.evaluation import corpus_bleu
from seq2seq_cli.precision import for_decoding, resolve
from seq2seq_cli.search_graphs import SearchGraphs


def timed(device, function):
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_test_set(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on the CPU), fp32 or bf16")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row; the fastest counts")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = select_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one batch at a time, as on a GPU (the graphs' searches take turns)
    precision = resolve(args.dtype, device)
    model, tokenizers, config = load_model(args.checkpoint, device)
    model = for_decoding(model, device, precision)
    sources = tokenizers.encode_src(read_lines(args.data / args.src))
    references = read_lines(args.data / args.ref)
    graphs = SearchGraphs(model, SpecialIds.of(tokenizers), device, precision)
    rows = []
    for beam_size in (1, args.beam_size):
        decoding = dataclasses.replace(config.decoding, beam_size=beam_size, batch_size=args.batch_size)

        def translate(with_graphs: bool):
            found = translate_corpus(model, tokenizers, sources, decoding, device, precision=precision,
                                     graphs=graphs if with_graphs else None)
            return [nbest[0].tokens for nbest in found]

        translate(False)  # warm-up: cuBLAS/oneDNN pick their kernels per shape, once per process
        shapes_before = len(graphs.shapes())
        _, first_graphed = timed(device, lambda: translate(True))  # records each shape's graph
        recorded = len(graphs.shapes()) - shapes_before
        seconds = {False: [], True: []}
        outputs = {}
        for _ in range(args.repeats):
            for with_graphs in (False, True):
                outputs[with_graphs], elapsed = timed(device, lambda: translate(with_graphs))
                seconds[with_graphs].append(elapsed)
        texts = {way: tokenizers.decode_tgt(tokens) for way, tokens in outputs.items()}
        eager, graphed = min(seconds[False]), min(seconds[True])
        rows.append({
            "search": "greedy" if beam_size == 1 else f"beam {beam_size}", "sentences": len(sources),
            "eager_sentences_per_s": round(len(sources) / eager, 1),
            "graphed_sentences_per_s": round(len(sources) / graphed, 1),
            "speedup": round(eager / graphed, 2),
            "first_graphed_pass_s": round(first_graphed, 2), "shapes_recorded": recorded,
            "eager_bleu": round(corpus_bleu(texts[False], references), 2),
            "graphed_bleu": round(corpus_bleu(texts[True], references), 2),
            "same_translations": round(sum(a == b for a, b in zip(outputs[False], outputs[True])) / len(sources), 4),
        })

    print(f"{'search':<8} {'eager sent/s':>12} {'graphed':>9} {'speedup':>8} {'1st pass s':>10} {'shapes':>6} "
          f"{'BLEU eager':>10} {'graphed':>8} {'same':>7}")
    for row in rows:
        print(f"{row['search']:<8} {row['eager_sentences_per_s']:>12.1f} {row['graphed_sentences_per_s']:>9.1f} "
              f"{row['speedup']:>7.2f}x {row['first_graphed_pass_s']:>10.2f} {row['shapes_recorded']:>6} "
              f"{row['eager_bleu']:>10.2f} {row['graphed_bleu']:>8.2f} {row['same_translations']:>7.2%}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (fixed shapes, no graphs)"
    print(f"device {device}: {name}, {precision}, batches of {args.batch_size}")
    if args.json:
        result = {"device": str(device), "device_name": name, "precision": precision, "batch_size": args.batch_size,
                  "checkpoint": str(args.checkpoint), "rows": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
