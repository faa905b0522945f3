"""Training and decoding throughput of s2s against a seed-style reference, with MFU.

    python benchmarks/speed.py --data ../shared/data/multi30k [--device cpu|cuda] [--compile] [--json out.json]

Multi30k de->en, emb 256 / hidden 256 / joint WordPiece vocabulary of 8000. In one run on one
machine it measures:

1. s2s training throughput (target tokens/s over real tokens; forward, backward, optimizer step)
   with length-bucketed batches of --batch-tokens;
2. the same for benchmarks/reference.py (sentence batches of --ref-batch-sentences in file order);
3. greedy and beam-5 decoding of test2016: s2s batched, the reference one sentence at a time.
   Both decode with the weights s2s has after its timed training, so they produce the same
   translations (the run checks how many greedy outputs agree);
4. peak memory (RSS on CPU, max allocated on CUDA);
5. model FLOPs per target token counted from the layer sizes (only work the model needs:
   real tokens, attention keys once per source position), the achieved FLOP/s, and that as a
   fraction of the fp32 matmul peak measured in this run (MFU);
6. operator calls per training step (forward, loss, backward, clip, AdamW), counted by the
   profiler on a CPU copy of the model: ATen calls not made from inside another ATen call,
   without views and other calls that launch nothing, so each is at least one kernel launch on
   a GPU, and the GRU cell as the one fused call it is on CUDA, each way (PyTorch 2.4+). Given
   for the first timed batch (per step and per target token) and per target position (the
   per-token loop's share: two synthetic batches of 32 sentences whose targets are 16 and 32
   tokens long).

``--compile`` also times s2s training with the decoder step (attention + GRU cell, the body of
the per-token loop) under ``torch.compile(dynamic=True)``, after the eager row and on the same
batches, and reports the compile warm-up separately: the evidence for or against offering it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from seq2seq_cli.config import DecodingConfig, ModelConfig, TokenizerConfig
from seq2seq_cli.data import TokenBatches, collate, filter_pairs, read_lines, read_parallel, tokenize_corpus
from seq2seq_cli.decoding import translate_corpus
from seq2seq_cli.device import select_device
from seq2seq_cli.precision import autocast
from seq2seq_cli import model as model_module
from seq2seq_cli.loss import sequence_loss
from seq2seq_cli.model import build_model, gru_update
from seq2seq_cli.tokenization import build_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, size: int = 2048) -> float:
    """Best fp32 FLOP/s (bf16 on CUDA, as training uses) of a square matmul."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        size = 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(8):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


def flops_per_target_token(config: ModelConfig, vocab: int, src_per_tgt: float, attended_per_tgt: float) -> float:
    """Forward+backward FLOPs per target token: 3x the forward multiply-adds, times 2.

    ``src_per_tgt``: source tokens per target token; ``attended_per_tgt``: source positions
    each target step attends over (averaged over target tokens)."""
    e, h = config.embed_dim, config.hidden_size
    a = config.attention_dim or h
    features = h + 2 * h + e
    decoder = 3 * h * (2 * h + e) + 3 * h * h  # GRU cell
    decoder += h * a + attended_per_tgt * (a + 2 * h)  # query projection, v . tanh, context
    decoder += features * config.output_dim + config.output_dim * vocab if config.output_dim else features * vocab
    encoder = 2 * 4 * h * (e + h) + (config.encoder_layers - 1) * 2 * 4 * h * (2 * h + h) + 2 * h * a
    return 2 * 3 * (decoder + encoder * src_per_tgt)


# ATen calls that only make views or read metadata: no kernel runs for them on a GPU.
NO_KERNEL = {"aten::" + name for name in (
    "t", "transpose", "view", "reshape", "unsqueeze", "squeeze", "narrow", "select", "slice", "detach", "expand",
    "expand_as", "as_strided", "permute", "split", "chunk", "unbind", "alias", "_unsafe_view", "_reshape_alias",
    "view_as", "lift_fresh", "empty", "empty_like", "empty_strided", "result_type", "item", "_local_scalar_dense",
    "is_nonzero", "resolve_conj", "resolve_neg", "contiguous", "flatten", "to", "_to_copy", "dim", "size", "stride")}


@torch.library.custom_op("s2s_count::fused_gru_cell", mutates_args=())
def fused_gru_cell(input_gates: torch.Tensor, hidden_gates: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The GRU cell as one call, forward and backward, as CUDA's fused kernel runs it; on the
    CPU ``gru_update`` writes it out in ten operations, which a GPU does not launch."""
    return gru_update(input_gates, hidden_gates, hidden)


@torch.library.custom_op("s2s_count::fused_gru_cell_backward", mutates_args=())
def fused_gru_cell_backward(grad: torch.Tensor, input_gates: torch.Tensor, hidden_gates: torch.Tensor,
                            hidden: torch.Tensor) -> list[torch.Tensor]:
    input_reset, input_update, input_new = input_gates.chunk(3, 1)
    hidden_reset, hidden_update, hidden_new = hidden_gates.chunk(3, 1)
    reset, update = torch.sigmoid(input_reset + hidden_reset), torch.sigmoid(input_update + hidden_update)
    new = torch.tanh(input_new + reset * hidden_new)
    grad_update = grad * (hidden - new) * update * (1 - update)
    grad_new = grad * (1 - update) * (1 - new * new)
    grad_reset = grad_new * hidden_new * reset * (1 - reset)
    return [torch.cat([grad_reset, grad_update, grad_new], 1), torch.cat([grad_reset, grad_update, grad_new * reset], 1),
            grad * update]


fused_gru_cell.register_autograd(lambda ctx, grad: tuple(fused_gru_cell_backward(grad, *ctx.saved_tensors)),
                                 setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))


def operator_calls(config: ModelConfig, tokenizers, batch) -> int:
    """Kernel-launching ATen calls of one training step of a fresh CPU copy of the model on
    ``batch`` as CUDA runs it: the loss from the logits, the GRU cell as one fused kernel each way."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(1)
    model = build_model(config, tokenizers.src_size, tokenizers.tgt_size, tokenizers.pad_id).train()
    step = training_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3), tokenizers.pad_id,
                         torch.device("cpu"))
    model_module.gru_update = fused_gru_cell
    try:
        step(batch)  # AdamW creates its state on the first step
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batch)
    finally:
        model_module.gru_update = gru_update
    counted = ("aten::", "s2s_count::")

    def inside_another(event) -> bool:
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith(counted):
            parent = parent.cpu_parent
        return parent is not None

    return sum(1 for event in prof.events()
               if event.name.startswith(counted) and event.name not in NO_KERNEL and not inside_another(event))


def multi30k_training_corpus(data: Path, max_len: int):
    """A joint 8,000-token WordPiece tokenizer trained on Multi30k's train split (de->en), and
    the split tokenized with it, pairs longer than ``max_len`` tokens left out."""
    src_path, tgt_path = data / "train.de", data / "train.en"
    lines = read_parallel(src_path, tgt_path)
    tokenizers = build_tokenizers(TokenizerConfig(vocab_size=8000), *lines)
    corpus, _, _ = filter_pairs(tokenize_corpus(tokenizers, str(src_path), str(tgt_path), lines=lines), max_len)
    return tokenizers, corpus


def training_step(model, optimizer, pad_id: int, device: torch.device, precision: str = "fp32",
                  loss_from_model: bool = False):
    """One update (forward, label-smoothed loss over real tokens, backward, clip, Adam) of ``model``
    in ``precision`` (``training.precision``'s values).

    ``loss_from_model``: the loss as the trainer takes it, from the model given the targets (on
    the CPU without logits); else from the logits, as a GPU computes it, and the reference."""

    def step(batch):
        with autocast(device, precision):
            if loss_from_model:
                loss = model(batch.src_ids, batch.src_lengths, batch.tgt_in, tgt_out=batch.tgt_out, label_smoothing=0.1)
            else:
                loss = sequence_loss(model(batch.src_ids, batch.src_lengths, batch.tgt_in), batch.tgt_out, pad_id, 0.1)
        optimizer.zero_grad(set_to_none=True)
        (loss / batch.n_tgt_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def train_throughput(step, batches, seconds: float, device, warmup: int = 3):
    """Run ``step(batch)`` over ``batches`` (cycled) for about ``seconds``; return tokens/s."""
    for batch in batches[:warmup]:
        step(batch)
    synchronize(device)
    tokens, count, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = batches[(warmup + count) % len(batches)]
        step(batch)
        tokens += batch.n_tgt_tokens
        count += 1
    synchronize(device)
    return tokens / (time.perf_counter() - started), count


def compiled_training(model, step, batches, seconds: float, device, warmup: int = 5) -> dict:
    """Training throughput with the per-token loop's attention and GRU cell compiled; the eager
    functions are put back after."""
    model.decoder.attention.attend = torch.compile(model.decoder.attention.attend, dynamic=True)
    model_module.gru_update = torch.compile(gru_update, dynamic=True)
    try:
        started = time.perf_counter()
        for batch in batches[:warmup]:  # compiles forward and backward; dynamic shapes need no recompiles
            step(batch)
        synchronize(device)
        warmup_s = time.perf_counter() - started
        tokens_per_s, steps = train_throughput(step, batches[warmup:], seconds, device)
    except Exception as err:  # a benchmark row, not the product: report why and go on
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    finally:
        del model.decoder.attention.attend
        model_module.gru_update = gru_update
    print(f"s2s training, decoder step compiled: {tokens_per_s:.0f} target tokens/s over {steps} steps "
          f"(warm-up {warmup_s:.0f} s)", flush=True)
    return {"tokens_per_s": round(tokens_per_s, 1), "steps_timed": steps, "warmup_s": round(warmup_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--output-dim", type=int, default=ModelConfig.output_dim)
    parser.add_argument("--batch-tokens", type=int, default=4000)
    parser.add_argument("--ref-batch-sentences", type=int, default=128)
    parser.add_argument("--train-seconds", type=float, default=90.0)
    parser.add_argument("--ref-train-seconds", type=float, default=45.0)
    parser.add_argument("--ref-sentences", type=int, default=200, help="test sentences the reference decodes")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time training with the decoder step compiled")
    args = parser.parse_args()
    device = select_device(args.device)
    torch.manual_seed(1)

    tokenizers, corpus = multi30k_training_corpus(args.data, max_len=100)
    config = ModelConfig(embed_dim=256, hidden_size=256, dropout=0.3, output_dim=args.output_dim)
    src_per_tgt = sum(len(s) + 1 for s in corpus.src_ids) / sum(len(t) + 1 for t in corpus.tgt_ids)
    attended = sum((len(s) + 1) * (len(t) + 1) for s, t in zip(corpus.src_ids, corpus.tgt_ids)) / sum(
        len(t) + 1 for t in corpus.tgt_ids)
    flops = flops_per_target_token(config, tokenizers.tgt_size, src_per_tgt, attended)

    peak = matmul_peak(device)

    # 1. s2s training
    model = build_model(config, tokenizers.src_size, tokenizers.tgt_size, tokenizers.pad_id).to(device).train()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **fused)
    token_batches = TokenBatches(corpus, tokenizers, args.batch_tokens, seed=1)
    s2s_batches = [token_batches.make_batch(b).to(device) for b in token_batches.epoch_batches(0)]

    s2s_step = training_step(model, optimizer, tokenizers.pad_id, device, "auto", loss_from_model=True)
    s2s_tps, s2s_steps = train_throughput(s2s_step, s2s_batches, args.train_seconds, device)
    print(f"s2s training: {s2s_tps:.0f} target tokens/s over {s2s_steps} steps", flush=True)
    compiled = compiled_training(model, s2s_step, s2s_batches, args.train_seconds, device) if args.compile else None

    # 2. reference training, on its own copy of the initial-size model
    torch.manual_seed(1)
    seed_style = reference.from_s2s(build_model(config, tokenizers.src_size, tokenizers.tgt_size, tokenizers.pad_id)).to(device)
    seed_style.train()
    ref_optimizer = torch.optim.AdamW(seed_style.parameters(), lr=1e-3)
    n = args.ref_batch_sentences
    ref_batches = [collate(corpus.src_ids[i: i + n], corpus.tgt_ids[i: i + n], tokenizers).to(device)
                   for i in range(0, len(corpus), n)]

    # The seed ran in full precision: the reference gets no autocast.
    ref_step = training_step(seed_style, ref_optimizer, tokenizers.pad_id, device)
    ref_tps, ref_steps = train_throughput(ref_step, ref_batches, args.ref_train_seconds, device)

    # 3. decoding test2016 with the weights s2s has now
    model.eval()
    test = tokenizers.encode_src(read_lines(args.data / "test_2016_flickr.de"))
    decoding = DecodingConfig(batch_size=128)
    reference_model = reference.from_s2s(model).to(device).eval()
    rows = {}
    for name, beam in (("greedy", 1), (f"beam{args.beam_size}", args.beam_size)):
        settings = dataclasses.replace(decoding, beam_size=beam)
        translate_corpus(model, tokenizers, test[:64], settings, device)  # warm-up
        synchronize(device)
        started = time.perf_counter()
        ours = translate_corpus(model, tokenizers, test, settings, device)
        synchronize(device)
        s2s_rate = len(test) / (time.perf_counter() - started)
        subset = test[: args.ref_sentences]
        started = time.perf_counter()
        theirs = []
        for source in subset:
            src_ids = torch.tensor([source + [tokenizers.eos_id]], device=device)
            limit = int(len(source) * decoding.max_length_ratio) + decoding.max_length_offset
            if beam == 1:
                theirs.append(reference_model.greedy(src_ids, tokenizers.bos_id, tokenizers.eos_id, limit))
            else:
                theirs.append(reference_model.beam(src_ids, tokenizers.bos_id, tokenizers.eos_id, limit, beam,
                                                   decoding.length_penalty))
        synchronize(device)
        ref_rate = len(subset) / (time.perf_counter() - started)
        agree = sum(o[0].tokens == t for o, t in zip(ours, theirs)) / len(subset)
        rows[name] = {"s2s_sentences_per_s": round(s2s_rate, 1), "reference_sentences_per_s": round(ref_rate, 1),
                      "speedup": round(s2s_rate / ref_rate, 2), "same_output_fraction": round(agree, 3)}

    # 6. operator calls, last: counting builds fresh models and reseeds PyTorch's generator
    first = token_batches.make_batch(token_batches.epoch_batches(0)[0])
    generator = torch.Generator().manual_seed(1)
    synthetic = [collate([torch.randint(5, 1000, (14,), generator=generator).tolist()] * 32,
                         [torch.randint(5, 1000, (length - 1,), generator=generator).tolist()] * 32, tokenizers)
                 for length in (16, 32)]
    short, long = (operator_calls(config, tokenizers, batch) for batch in synthetic)
    calls = {"per_step": operator_calls(config, tokenizers, first), "target_positions": first.tgt_in.size(1),
             "target_tokens": first.n_tgt_tokens, "per_target_position_in_loop": (long - short) / 16}
    calls["per_target_token"] = round(calls["per_step"] / first.n_tgt_tokens, 3)
    print(f"operator calls per training step: {calls['per_step']} ({calls['target_positions']} target positions, "
          f"{calls['target_tokens']} target tokens); {calls['per_target_position_in_loop']:.1f} per target position "
          "in the loop", flush=True)

    achieved = flops * s2s_tps
    result = {
        "device": str(device), "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": dataclasses.asdict(config), "vocab_size": tokenizers.tgt_size,
        "batch_tokens": args.batch_tokens, "reference_batch_sentences": n,
        "train_tokens_per_s": round(s2s_tps, 1), "train_steps_timed": s2s_steps,
        "reference_train_tokens_per_s": round(ref_tps, 1), "reference_train_steps_timed": ref_steps,
        "train_speedup": round(s2s_tps / ref_tps, 2),
        "greedy_speedup": rows["greedy"]["speedup"], "beam_speedup": rows[f"beam{args.beam_size}"]["speedup"],
        "decoding": rows,
        "flops_per_target_token": round(flops), "achieved_flops_per_s": round(achieved),
        "matmul_peak_flops_per_s": round(peak), "train_mfu": round(achieved / peak, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "operator_calls": calls,
    }
    if compiled is not None:
        result["compiled"] = compiled
    if device.type == "cuda":
        result["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)

    print(f"device {device}, {torch.get_num_threads()} threads, model emb 256 / hidden 256 / vocab {tokenizers.tgt_size}, "
          f"output_dim {config.output_dim}")
    print(f"{'measure':<34} {'s2s':>12} {'reference':>12} {'ratio':>8}")
    print(f"{'train target tokens/s':<34} {s2s_tps:>12.0f} {ref_tps:>12.0f} {result['train_speedup']:>7.2f}x")
    if compiled is not None and "tokens_per_s" in compiled:
        print(f"{'train, decoder step compiled':<34} {compiled['tokens_per_s']:>12.0f} {'':>12} "
              f"{compiled['tokens_per_s'] / s2s_tps:>7.2f}x vs eager (compile warm-up {compiled['warmup_s']:.0f} s)")
    elif compiled is not None:
        print(f"train, decoder step compiled: failed ({compiled['error']})")
    for name, row in rows.items():
        print(f"{name + ' sentences/s (test2016)':<34} {row['s2s_sentences_per_s']:>12.1f} "
              f"{row['reference_sentences_per_s']:>12.1f} {row['speedup']:>7.2f}x   same output: "
              f"{row['same_output_fraction']:.0%}")
    print(f"model FLOPs per target token {flops / 1e6:.1f} M; achieved {achieved / 1e9:.1f} GFLOP/s; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s; MFU {result['train_mfu']:.1%}")
    print(f"operator calls per training step {calls['per_step']} ({calls['per_target_token']} per target token; "
          f"{calls['per_target_position_in_loop']:.1f} per target position in the loop)")
    print(f"peak memory {result['peak_rss_mb']:.0f} MB RSS" + (
        f", {result['peak_cuda_allocated_mb']:.0f} MB CUDA" if device.type == "cuda" else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
