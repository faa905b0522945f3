"""Train a config on Multi30k de->en for a wall-clock budget, then report test2016 BLEU and chrF.

    python benchmarks/quality.py --data ../shared/data/multi30k --minutes 20 [--config configs/multi30k_cpu.yaml]
        [--run-dir runs/quality] [--json out.json] [KEY=VALUE ...]

Scores are cased, detokenized sacreBLEU (13a) of the best checkpoint against the raw
references, greedy and beam search (the config's beam size and length penalty, default 5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from seq2seq_cli.checkpoint import load_model
from seq2seq_cli.config import load_config
from seq2seq_cli.data import read_lines
from seq2seq_cli.decoding import translate_corpus
from seq2seq_cli.device import select_device
from seq2seq_cli.evaluation import score_report
from seq2seq_cli.train import train

ROOT = Path(__file__).resolve().parent.parent


def scores(model, vocabs, decoding, device, src: Path, ref: Path) -> dict:
    sources = vocabs.encode_src(read_lines(src))
    started = time.perf_counter()
    hypotheses = vocabs.decode_tgt([n[0].tokens for n in translate_corpus(model, vocabs, sources, decoding, device)])
    seconds = time.perf_counter() - started
    report = score_report(hypotheses, read_lines(ref))
    return {"bleu": report["bleu"]["score"], "chrf": report["chrf"]["score"], "length_ratio": report["length_ratio"],
            "bleu_signature": report["bleu"]["signature"], "sentences_per_s": round(len(sources) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "multi30k_cpu.yaml")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--json", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, KEY=VALUE")
    args = parser.parse_args()
    data = args.data.resolve()
    files = {"train_src": "train.de", "train_tgt": "train.en", "dev_src": "val.de", "dev_tgt": "val.en",
             "test_src": "test_2016_flickr.de", "test_tgt": "test_2016_flickr.en"}
    overrides = [f"data.{key}={data / name}" for key, name in files.items()]
    overrides += [f"training.max_minutes={args.minutes}", f"run_dir={args.run_dir}", *args.overrides]
    config = load_config(args.config, overrides)

    started = time.perf_counter()
    summary = train(config, overwrite=True)
    wall = time.perf_counter() - started

    device = select_device(config.training.device)
    model, vocabs, saved = load_model(config.run_dir, device)
    beam = saved.decoding if saved.decoding.beam_size > 1 else dataclasses.replace(saved.decoding, beam_size=5)
    greedy = dataclasses.replace(saved.decoding, beam_size=1)
    result = {
        "config": str(args.config), "overrides": args.overrides, "minutes": args.minutes,
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "steps": summary["step"], "best_step": summary["best_step"], "train_wall_s": round(wall, 1),
        "dev_greedy": scores(model, vocabs, greedy, device, data / files["dev_src"], data / files["dev_tgt"]),
        "test_greedy": scores(model, vocabs, greedy, device, data / files["test_src"], data / files["test_tgt"]),
        "test_beam": scores(model, vocabs, beam, device, data / files["test_src"], data / files["test_tgt"]),
        "beam_size": beam.beam_size, "length_penalty": beam.length_penalty,
    }
    print(f"{args.config.name}: {summary['step']} steps in {wall / 60:.1f} min on {device} "
          f"({torch.get_num_threads()} threads)")
    for name in ("dev_greedy", "test_greedy", "test_beam"):
        row = result[name]
        print(f"  {name:<12} BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}  len ratio {row['length_ratio']:.3f}  "
              f"{row['sentences_per_s']:.0f} sent/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
