"""Decoding speed and quality of a trained model on a test set: greedy vs beam, batched vs one
at a time, and each number format (fp32, bf16 autocast, int8 weights).

    python benchmarks/decode_speed.py --checkpoint runs/multi30k --data ../shared/data/multi30k \
        [--src test_2016_flickr.de --ref test_2016_flickr.en] [--formats fp32,bf16,int8] [--sampling] [--json out.json]

Prints a table and writes JSON. "one at a time" runs the very same beam search code with
batches of one sentence, on the first --single-sentences sentences (it is slow; on the CPU as
many such batches at once as torch has threads, as with every batch size); the speedup
compares sentences/s measured in this same run. Each format's rows say how much faster than
fp32 with the same search they are, and how much BLEU they give up, measured in this run
(every format warmed up on the whole test set first, then the formats take turns).

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
from seq2seq_cli.decoding import Sampling, translate_corpus
from seq2seq_cli.device import decoding_threads, select_device
from seq2seq_cli.evaluation import corpus_bleu
from seq2seq_cli.precision import cpu_computes_bf16, for_decoding


def timed(device, work):
    """``work()`` and its wall time in seconds, a GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def timed_translate(model, tokenizers, sources, decoding, device, precision="auto", sampling=None):
    results, seconds = timed(device, lambda: translate_corpus(model, tokenizers, sources, decoding, device,
                                                              precision=precision, sampling=sampling))
    return tokenizers.decode_tgt([nbest[0].tokens for nbest in results]), seconds


def add_model_and_test_set(parser: argparse.ArgumentParser) -> None:
    """The arguments of a decoding benchmark: a trained model, a test set and the search."""
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    parser.add_argument("--data", type=Path, required=True, help="folder with the test files")
    parser.add_argument("--src", default="test_2016_flickr.de")
    parser.add_argument("--ref", default="test_2016_flickr.en")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_test_set(parser)
    parser.add_argument("--single-sentences", type=int, default=200,
                        help="sentences decoded one at a time for the unbatched baseline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--formats", default="fp32,bf16,int8",
                        help="number formats to compare (int8: CPU only); fp32 always runs first")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row; the fastest counts")
    parser.add_argument("--sampling", action="store_true",
                        help="also time `s2s translate --sample`, from the whole distribution and from the top 10")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.single_sentences < 1:
        parser.error("--single-sentences must be at least 1 (the unbatched baseline is a row of the table)")

    device = select_device(args.device)
    model, tokenizers, config = load_model(args.checkpoint, device)
    sources_text, references = read_lines(args.data / args.src), read_lines(args.data / args.ref)
    sources = tokenizers.encode_src(sources_text)
    base = dataclasses.replace(config.decoding, batch_size=args.batch_size)
    greedy = dataclasses.replace(base, beam_size=1)
    beam = dataclasses.replace(base, beam_size=args.beam_size)
    single = dataclasses.replace(beam, batch_size=1)

    formats = ["fp32"] + [f for f in args.formats.split(",") if f != "fp32" and (f != "int8" or device.type == "cpu")
                          and (f != "bf16" or device.type != "cpu" or cpu_computes_bf16())]
    if len(formats) < len(set(args.formats.split(",")) | {"fp32"}):
        print(f"formats run on {device}: {', '.join(formats)} (int8 is CPU only; bf16 on a CPU needs AVX-512 or AMX)")
    searches = [("greedy, batched", greedy, sources, None), (f"beam {args.beam_size}, batched", beam, sources, None)]
    if args.sampling:
        searches += [("sample, batched", greedy, sources, Sampling()),
                     ("sample top-10, batched", greedy, sources, Sampling(topk=10))]
    models = {}
    for number_format in formats:
        # The model as `s2s translate --dtype/--quantize` runs it (int8: the weights quantized).
        precision = "fp32" if number_format == "int8" else number_format
        models[number_format] = (for_decoding(model, device, precision, "int8" if number_format == "int8" else "none"),
                                 precision)
        # Warm-up over every batch shape: oneDNN compiles a bf16 kernel per new shape, once per process.
        for decoding in (greedy, beam):
            translate_corpus(models[number_format][0], tokenizers, sources, decoding, device, precision=precision)
    # Formats take turns, --repeats times, and each row keeps its fastest pass: on a shared
    # machine a slow spell then hits every format alike instead of one.
    timings: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], list[str]] = {}
    for _ in range(args.repeats):
        for number_format, (format_model, precision) in models.items():
            for name, decoding, subset, sampling in searches:
                hypotheses, seconds = timed_translate(format_model, tokenizers, subset, decoding, device, precision,
                                                      sampling)
                timings.setdefault((name, number_format), []).append(seconds)
                outputs[(name, number_format)] = hypotheses
    single_name = f"beam {args.beam_size}, one at a time"
    hypotheses, seconds = timed_translate(model, tokenizers, sources[: args.single_sentences], single, device, "fp32")
    timings[(single_name, "fp32")], outputs[(single_name, "fp32")] = [seconds], hypotheses

    rows = []
    for (name, number_format), seconds_list in sorted(timings.items(), key=lambda item: formats.index(item[0][1])):
        hypotheses, seconds = outputs[(name, number_format)], min(seconds_list)
        row = {"setting": name, "format": number_format, "sentences": len(hypotheses), "seconds": round(seconds, 3),
               "sentences_per_s": round(len(hypotheses) / seconds, 2),
               "bleu": round(corpus_bleu(hypotheses, references[: len(hypotheses)]), 2)}
        fp32_row = next((r for r in rows if r["setting"] == name and r["format"] == "fp32"), None)
        if fp32_row is not None:
            row["speedup_vs_fp32"] = round(row["sentences_per_s"] / fp32_row["sentences_per_s"], 2)
            row["bleu_vs_fp32"] = round(row["bleu"] - fp32_row["bleu"], 2)
        rows.append(row)

    greedy_row, beam_row, single_row = (next(row for row in rows if row["setting"] == name) for name in
                                        ("greedy, batched", f"beam {args.beam_size}, batched", single_name))
    counter = FlopCounterMode(display=False)
    with decoding_threads(device), counter:  # the counter sees its own thread's operations only: search on this one
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
    print(f"{'setting':<28} {'format':>6} {'sentences':>9} {'seconds':>9} {'sent/s':>9} {'BLEU':>7} "
          f"{'vs fp32':>8} {'BLEU diff':>9}")
    for row in rows:
        versus = f"{row['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in row else ""
        diff = f"{row['bleu_vs_fp32']:+.2f}" if "bleu_vs_fp32" in row else ""
        print(f"{row['setting']:<28} {row['format']:>6} {row['sentences']:>9} {row['seconds']:>9.2f} "
              f"{row['sentences_per_s']:>9.1f} {row['bleu']:>7.2f} {versus:>8} {diff:>9}")
    print(f"batched beam speedup over one at a time: {result['batched_beam_speedup']:.1f}x; "
          f"beam - greedy BLEU: {result['beam_minus_greedy_bleu']:+.2f}  (device {device})")
    print(f"roofline: batched beam does {beam_flops_per_sentence / 1e6:.0f} M matmul FLOPs per sentence; at the "
          f"measured matmul peak of {peak / 1e9:.0f} GFLOP/s it could reach at most {roofline:.0f} sentences/s, "
          f"{result['beam_roofline_speedup']:.1f}x one at a time")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
