"""Load on `s2s serve`: throughput and latency with 1, 8 and 64 concurrent clients.

    python benchmarks/serve_load.py --checkpoint RUN --data ../shared/data/multi30k
        [--clients 1,8,64] [--sentences 1000] [--beam-size 1] [--seconds 60] [--decoders N]
        [--max-wait-ms M] [--file] [--json out.json]

Starts `s2s serve` on a free loopback port (127.0.0.1 only), then for each client count sends
the first --sentences sentences of test2016 (source side of the run's language pair), one
sentence per request, from that many concurrent clients (asyncio, one keep-alive connection
each, a minimal HTTP/1.1 client: the clients share the machine with the server), each phase bounded
by --seconds. Reports sentences/s, p50/p95/p99 request latency and the mean decoding batch
size (from /metrics), beside two offline rates on the same sentences, in this process:
- "s2s translate": what the command does with them on its input, through the same method
  (`Translator.translate_stream` over chunks of decoding.batch_size lines as they come, several
  chunks at once on the CPU's threads, output lines formatted); the issue's targets compare
  with this;
- "one call": `Translator.translate` on all of them at once (sorted across the whole set, as
  `s2s evaluate` does), the best case, shown beside it.
Both are measured right before and right after each phase, while the server is idle, and each
phase is compared with the mean of the two: this machine's speed drifts by a third within
minutes, and a ratio of rates taken minutes apart measured the drift. Every answer is checked
against the offline translation. With --file, a last phase sends the same sentences as one
text file to /translate_file (LibreTranslate's file translation) and downloads its translation:
the time from upload to the downloaded file, line by line against the offline translation.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from seq2seq_cli.config import language_pair
from seq2seq_cli.data import read_lines
from seq2seq_cli.translation import Translator, read_line_batches

TEST_FILES = {"de": "test_2016_flickr.de", "en": "test_2016_flickr.en"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def batch_counters(url: str) -> tuple[float, float]:
    """(decoding batches, sentences in them) so far."""
    text = httpx.get(f"{url}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("s2s_batch_sentences_")}
    return values.get("s2s_batch_sentences_count", 0.0), values.get("s2s_batch_sentences_sum", 0.0)


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for POST + JSON.

    The clients share the server's two cores, so they must cost little. With httpx's async
    client the same server reached 63.5 sentences/s at 64 clients in decoding batches of 2.8
    sentences: the clients could not send faster, and the benchmark measured httpx. This client
    took 0.5 s of CPU for 2,000 requests."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, payload: dict) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, sentences: list[str], expected: list[str], clients: int, seconds: float, target: str):
    """Each client takes the next sentence and sends it alone, until all are sent or time is up."""
    queue = list(enumerate(sentences))[::-1]
    latencies, wrong = [], 0
    deadline = time.perf_counter() + seconds
    host, port = url.removeprefix("http://").split(":")

    async def client() -> None:
        nonlocal wrong
        connection = Connection(host, int(port))
        try:
            while queue and time.perf_counter() < deadline:
                index, text = queue.pop()
                started = time.perf_counter()
                status, answer = await connection.post_json("/translate", {"q": text, "target": target})
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise SystemExit(f"HTTP {status}: {answer}")
                wrong += answer["translatedText"] != expected[index]
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return latencies, elapsed, wrong


def translate_file(url: str, sentences: list[str], expected: list[str], source: str, target: str
                   ) -> tuple[float, int]:
    """Seconds from sending the sentences as one .txt file to having its translation downloaded,
    and how many lines of it differ from the offline translation."""
    started = time.perf_counter()
    answer = httpx.post(f"{url}/translate_file", data={"source": source, "target": target}, timeout=600,
                        files={"file": ("test2016.txt", "".join(s + "\n" for s in sentences).encode())})
    if answer.status_code != 200:
        raise SystemExit(f"HTTP {answer.status_code}: {answer.text}")
    lines = httpx.get(answer.json()["translatedFileUrl"], timeout=60).text.split("\n")[:-1]
    elapsed = time.perf_counter() - started
    return elapsed, sum(a != b for a, b in zip(lines, expected)) + abs(len(lines) - len(expected))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--decoders", type=int, help="passed to s2s serve (default: its own)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="passed to s2s serve")
    parser.add_argument("--file", action="store_true", help="also send the sentences as one file to /translate_file")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    translator = Translator.load(args.checkpoint, "cpu", beam_size=args.beam_size)
    source, target = language_pair(translator.config.data)
    sentences = read_lines(args.data / TEST_FILES[source])[: args.sentences]
    expected = translator.translate(sentences)  # also the warm-up of the offline measurements

    stdin = "".join(sentence + "\n" for sentence in sentences).encode()

    def offline_rates() -> tuple[float, float]:
        """Sentences/s of s2s translate's loop and of one Translator.translate call."""
        started = time.perf_counter()
        for _, results in translator.translate_stream(read_line_batches(io.BytesIO(stdin),
                                                                        translator.decoding.batch_size)):
            for hypotheses in results:
                translator.output_lines(0, hypotheses)
        middle = time.perf_counter()
        translator.translate(sentences)
        return len(sentences) / (middle - started), len(sentences) / (time.perf_counter() - middle)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "seq2seq_cli", "serve", "--checkpoint", str(args.checkpoint),
                               "--port", str(port), "--device", "cpu", "--beam-size", str(args.beam_size),
                               "--max-wait-ms", str(args.max_wait_ms),
                               *(["--decoders", str(args.decoders)] if args.decoders else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        deadline = time.time() + 120
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("s2s serve did not start")
                time.sleep(0.2)
        for clients in (int(c) for c in args.clients.split(",")):
            before = offline_rates()
            batches_before, sentences_before = batch_counters(url)
            latencies, elapsed, wrong = asyncio.run(load(url, sentences, expected, clients, args.seconds, target))
            batches_after, sentences_after = batch_counters(url)
            after = offline_rates()
            rows.append({"clients": clients, "sentences": len(latencies),
                         "sentences_per_s": round(len(latencies) / elapsed, 1),
                         "translate_sentences_per_s": round((before[0] + after[0]) / 2, 1),
                         "one_call_sentences_per_s": round((before[1] + after[1]) / 2, 1),
                         "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
                         "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
                         "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
                         "mean_batch": round((sentences_after - sentences_before)
                                             / max(batches_after - batches_before, 1), 2),
                         "different_from_offline": wrong})
        if args.file:
            before = offline_rates()
            batches_before, sentences_before = batch_counters(url)
            elapsed, wrong = translate_file(url, sentences, expected, source, target)
            batches_after, sentences_after = batch_counters(url)
            after = offline_rates()
            milliseconds = round(1000 * elapsed, 1)
            rows.append({"clients": "file", "sentences": len(sentences),
                         "sentences_per_s": round(len(sentences) / elapsed, 1),
                         "translate_sentences_per_s": round((before[0] + after[0]) / 2, 1),
                         "one_call_sentences_per_s": round((before[1] + after[1]) / 2, 1),
                         "p50_ms": milliseconds, "p95_ms": milliseconds, "p99_ms": milliseconds,
                         "mean_batch": round((sentences_after - sentences_before)
                                             / max(batches_after - batches_before, 1), 2),
                         "different_from_offline": wrong})
    finally:
        server.terminate()
        server.wait(timeout=60)

    decoders = args.decoders or torch.get_num_threads()  # s2s serve's default on the CPU
    sequential = rows[0]["sentences_per_s"] if rows and rows[0]["clients"] == 1 else None
    print(f"s2s serve, beam {args.beam_size}, {decoders} decoder(s), max wait {args.max_wait_ms:g} ms, "
          f"{len(sentences)} test2016 sentences ({source}->{target}), {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'clients':>7} {'sent/s':>8} {'translate':>9} {'of it':>6} {'one call':>8} {'of it':>6} "
          f"{'x 1 client':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6} {'wrong':>5}")
    for row in rows:
        speedup = f"{row['sentences_per_s'] / sequential:.1f}x" if sequential and row["clients"] != "file" else "-"
        print(f"{row['clients']:>7} {row['sentences_per_s']:>8.1f} {row['translate_sentences_per_s']:>9.1f} "
              f"{row['sentences_per_s'] / row['translate_sentences_per_s']:>6.0%} "
              f"{row['one_call_sentences_per_s']:>8.1f} {row['sentences_per_s'] / row['one_call_sentences_per_s']:>6.0%} "
              f"{speedup:>10} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} "
              f"{row['mean_batch']:>6.2f} {row['different_from_offline']:>5}")
    if args.json:
        args.json.write_text(json.dumps({"beam_size": args.beam_size, "decoders": decoders,
                                         "max_wait_ms": args.max_wait_ms, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
