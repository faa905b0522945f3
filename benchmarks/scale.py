"""Corpora larger than memory: preparation throughput, and training start-up time and memory
from binary shards at 1M and 10M sentence pairs.

    python benchmarks/scale.py --data ../shared/data/multi30k [--sizes 1000000 10000000]
        [--workdir /tmp/s2s-scale] [--workers N] [--text-baseline] [--json out.json]

For each size, the Multi30k training pairs are repeated into a synthetic corpus of that many
pairs; ``s2s prepare`` tokenizes it into shards (timed: pairs/s, tokenizer training
included), then a fresh process builds the trainer from the shards and takes its first
steps. Start-up is the wall time from starting that process to the end of its first step;
memory is the process's peak RSS after start-up and after 50 more steps. ``--text-baseline``
adds the same measurement for the in-memory text path at the smallest size, for contrast.
The target: RSS growth under 2x for 10x the data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = 50


def synthetic_corpus(data: Path, folder: Path, pairs: int) -> tuple[Path, Path]:
    """Multi30k's training pairs repeated (cyclically) to ``pairs`` lines."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for side in ("de", "en"):
        lines = (data / f"train.{side}").read_text(encoding="utf-8").splitlines(keepends=True)
        path = folder / f"train.{side}"
        if not (path.is_file() and sum(1 for _ in open(path, "rb")) == pairs):
            with open(path, "w", encoding="utf-8") as out:
                out.writelines(itertools.islice(itertools.cycle(lines), pairs))
        paths.append(path)
    return paths[0], paths[1]


def overrides(data: Path, src: Path, tgt: Path, prepared: Path | None, run_dir: Path) -> list[str]:
    values = [f"data.train_src={src}", f"data.train_tgt={tgt}", f"data.dev_src={data / 'val.de'}",
              f"data.dev_tgt={data / 'val.en'}", f"run_dir={run_dir}", f"training.max_steps={STEPS + 1}",
              "training.max_epochs=0", "training.max_minutes=0", "training.validate_every=0",
              "training.log_every=1000", "training.device=cpu"]
    if prepared is not None:
        values.append(f"data.prepared_dir={prepared}")
    return values


def child(config_path: str, values: list[str]) -> None:
    """Build the trainer, take one step (start-up), then STEPS more; print a JSON line."""
    from seq2seq_cli.config import load_config
    from seq2seq_cli.launch import build_trainer

    config = load_config(config_path, values)
    trainer = build_trainer(config, overwrite=True)
    batches = trainer.epoch_batches(0)
    trainer.update([trainer.train_batches.make_batch(batches[0])])
    startup_done = time.time()
    startup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    tokens = 0
    for indices in batches[1: STEPS + 1]:
        batch = trainer.train_batches.make_batch(indices)
        trainer.update([batch])
        tokens += batch.n_tgt_tokens
    seconds = time.perf_counter() - started
    print(json.dumps({"startup_done": startup_done, "rss_startup_mb": round(startup_rss),
                      "rss_after_steps_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "train_pairs": len(trainer.train_batches.src_lengths),
                      "tokens_per_s": round(tokens / seconds)}))


def measure_training(config: Path, values: list[str]) -> dict:
    started = time.time()
    result = subprocess.run([sys.executable, __file__, "--child", str(config), *values],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"training child failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["startup_s"] = round(report.pop("startup_done") - started, 2)
    return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/s2s-scale"))
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "multi30k_cpu.yaml")
    parser.add_argument("--workers", type=int, default=0, help="prepare processes (default: one per core)")
    parser.add_argument("--text-baseline", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from seq2seq_cli.config import load_config
    from seq2seq_cli.shards import default_workers, prepare

    data = args.data.resolve()
    rows = []
    for pairs in args.sizes:
        folder = args.workdir / f"{pairs}"
        src, tgt = synthetic_corpus(data, folder, pairs)
        prepared = folder / "prepared"
        values = overrides(data, src, tgt, prepared, folder / "run")
        shutil.rmtree(prepared, ignore_errors=True)  # time a full prepare
        started = time.perf_counter()
        prepare(load_config(args.config, values), workers=args.workers)
        prepare_s = time.perf_counter() - started
        row = {"path": "shards", "pairs": pairs, "prepare_s": round(prepare_s, 1),
               "prepare_pairs_per_s": round(pairs / prepare_s), **measure_training(args.config, values)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.text_baseline and pairs == min(args.sizes):
            values = overrides(data, src, tgt, None, folder / "run-text")
            values.append(f"data.cache_dir={folder / 'cache'}")
            row = {"path": "text", "pairs": pairs, **measure_training(args.config, values)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\n{'path':<7}{'pairs':>11}{'prepare s':>11}{'pairs/s':>10}{'start-up s':>12}"
          f"{'RSS start MB':>14}{'RSS +50 steps':>15}{'tok/s':>8}")
    for row in rows:
        print(f"{row['path']:<7}{row['pairs']:>11,}{row.get('prepare_s', '-'):>11}{row.get('prepare_pairs_per_s', '-'):>10}"
              f"{row['startup_s']:>12}{row['rss_startup_mb']:>14}{row['rss_after_steps_mb']:>15}{row['tokens_per_s']:>8}")
    sharded = [r for r in rows if r["path"] == "shards"]
    growth = {"rss_growth": round(sharded[-1]["rss_after_steps_mb"] / sharded[0]["rss_after_steps_mb"], 2),
              "startup_growth": round(sharded[-1]["startup_s"] / sharded[0]["startup_s"], 2),
              "data_growth": sharded[-1]["pairs"] / sharded[0]["pairs"]}
    print(f"\n{growth['data_growth']:g}x the pairs: peak RSS x{growth['rss_growth']}, start-up x{growth['startup_growth']}")
    if args.json:
        report = {"rows": rows, **growth, "workers": args.workers or default_workers(),
                  "machine": platform.processor() or platform.machine(), "cpus": default_workers()}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
