"""Train a config on Multi30k de->en for a wall-clock budget, then report test2016 BLEU and chrF.

    python benchmarks/quality.py --data ../shared/data/multi30k --minutes 20 [--config configs/multi30k_cpu.yaml]
        [--run-dir runs/quality] [--evaluate-only] [--length-penalties 0.6,1.0,1.4] [--average K]
        [--json out.json] [KEY=VALUE ...]

Scores are cased, detokenized sacreBLEU (13a) of the best checkpoint against the raw
references, greedy and beam search (the config's beam size and length penalty, default 5).
``--length-penalties`` tunes beam search's length penalty on the dev set (val) and scores test
with the winner; ``--average K`` also scores the average of the last K step checkpoints
(train with ``training.keep_last`` >= K).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from seq2seq_cli.checkpoint import average_checkpoints, load_model
from seq2seq_cli.config import load_config
from seq2seq_cli.data import read_lines
from seq2seq_cli.decoding import translate_corpus
from seq2seq_cli.device import select_device
from seq2seq_cli.errors import UserError
from seq2seq_cli.evaluation import score_report
from seq2seq_cli.launch import train
from seq2seq_cli.progress import log_to_stderr

ROOT = Path(__file__).resolve().parent.parent


def scores(model, tokenizers, decoding, device, src: Path, ref: Path) -> dict:
    sources = tokenizers.encode_src(read_lines(src))
    started = time.perf_counter()
    hypotheses = tokenizers.decode_tgt([n[0].tokens for n in translate_corpus(model, tokenizers, sources, decoding, device)])
    seconds = time.perf_counter() - started
    report = score_report(hypotheses, [read_lines(ref)])
    return {"bleu": report["bleu"]["score"], "chrf": report["chrf"]["score"], "length_ratio": report["length_ratio"],
            "bleu_signature": report["bleu"]["signature"], "sentences_per_s": round(len(sources) / seconds, 1)}


def evaluate(run: Path, data: Path, files: dict, device, length_penalties: list[float], label: str) -> dict:
    """Greedy dev/test and beam test scores of a checkpoint; with ``length_penalties``, beam
    search's alpha is chosen by dev BLEU (never test) and test is scored with the winner."""
    model, tokenizers, saved = load_model(run, device)
    beam = saved.decoding if saved.decoding.beam_size > 1 else dataclasses.replace(saved.decoding, beam_size=5)
    greedy = dataclasses.replace(saved.decoding, beam_size=1)
    dev, test = (data / files["dev_src"], data / files["dev_tgt"]), (data / files["test_src"], data / files["test_tgt"])
    result = {"checkpoint": label, "dev_greedy": scores(model, tokenizers, greedy, device, *dev),
              "test_greedy": scores(model, tokenizers, greedy, device, *test),
              "test_beam": scores(model, tokenizers, beam, device, *test),
              "beam_size": beam.beam_size, "length_penalty": beam.length_penalty}
    if length_penalties:
        dev_beam = {alpha: scores(model, tokenizers, dataclasses.replace(beam, length_penalty=alpha), device, *dev)
                    for alpha in length_penalties}
        best = max(length_penalties, key=lambda alpha: dev_beam[alpha]["bleu"])
        result["dev_beam_by_length_penalty"] = {str(a): row["bleu"] for a, row in dev_beam.items()}
        result["tuned_length_penalty"] = best
        result["test_beam_tuned"] = scores(model, tokenizers, dataclasses.replace(beam, length_penalty=best), device, *test)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "multi30k_cpu.yaml")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--evaluate-only", action="store_true", help="score the run already in --run-dir")
    parser.add_argument("--length-penalties", type=lambda text: [float(v) for v in text.split(",")], default=[],
                        help="tune beam search's length penalty on dev over these values, e.g. 0.6,1.0,1.4")
    parser.add_argument("--average", type=int, default=0, help="also score the average of the last K checkpoints")
    parser.add_argument("--json", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, KEY=VALUE")
    args = parser.parse_args()
    log_to_stderr()  # training's log
    data = args.data.resolve()
    files = {"train_src": "train.de", "train_tgt": "train.en", "dev_src": "val.de", "dev_tgt": "val.en",
             "test_src": "test_2016_flickr.de", "test_tgt": "test_2016_flickr.en"}
    overrides = [f"data.{key}={data / name}" for key, name in files.items()]
    overrides += [f"training.max_minutes={args.minutes}", f"run_dir={args.run_dir}", *args.overrides]
    config = load_config(args.config, overrides)

    result = {"config": str(args.config), "overrides": args.overrides, "minutes": args.minutes,
              "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    if not args.evaluate_only:
        started = time.perf_counter()
        summary = train(config, overwrite=True)
        result.update(steps=summary["step"], best_step=summary["best_step"],
                      train_wall_s=round(time.perf_counter() - started, 1))
        print(f"{args.config.name}: {summary['step']} steps in {result['train_wall_s'] / 60:.1f} min "
              f"({torch.get_num_threads()} threads)")
    device = select_device(config.training.device)
    result["device"] = str(device)
    checkpoints = [evaluate(args.run_dir, data, files, device, args.length_penalties, "best")]
    if args.average:
        try:
            averaged = average_checkpoints(args.run_dir, args.average)
        except UserError as err:  # a run too short for K step checkpoints still reports its best
            result["average_error"] = str(err)
            print(f"no average: {err}")
        else:
            checkpoints.append(evaluate(averaged, data, files, device, args.length_penalties,
                                        f"average of last {args.average}"))
    result["checkpoints"] = checkpoints
    for row in checkpoints:
        print(f"{row['checkpoint']}:")
        for name in ("dev_greedy", "test_greedy", "test_beam", "test_beam_tuned"):
            if name in row:
                score = row[name]
                print(f"  {name:<16} BLEU {score['bleu']:6.2f}  chrF {score['chrf']:6.2f}  "
                      f"len ratio {score['length_ratio']:.3f}  {score['sentences_per_s']:.0f} sent/s")
        if "tuned_length_penalty" in row:
            print(f"  dev beam BLEU by length penalty: {row['dev_beam_by_length_penalty']} "
                  f"-> {row['tuned_length_penalty']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
