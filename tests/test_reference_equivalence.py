"""The speed benchmark's seed-style reference computes exactly what s2s computes.

This keeps the speed comparison honest, and it proves s2s's faster training path (keys
projected once, one vocabulary projection over all steps, packed encoder) is an exact rewrite
of the straightforward one: same logits and same gradients.
"""

import sys

import pytest
import torch

from conftest import ROOT
from seq2seq_cli.config import ModelConfig
from seq2seq_cli.data import pad_sources
from seq2seq_cli.model import build_model

sys.path.insert(0, str(ROOT / "benchmarks"))
import reference  # noqa: E402


@pytest.mark.parametrize("output_dim", [0, 6])
def test_reference_matches_s2s(output_dim):
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=8, hidden_size=10, attention_dim=7, dropout=0.0,
                                    output_dim=output_dim), 30, 25, pad_id=0)
    seed_style = reference.from_s2s(model)
    src_ids, src_lengths = pad_sources([[5, 6, 7, 8], [9, 10, 11, 12]], 0, 3)  # equal lengths: no padding
    tgt_in = torch.tensor([[2, 4, 5, 6, 7], [2, 8, 9, 0, 0]])
    ours = model(src_ids, src_lengths, tgt_in)
    theirs = seed_style(src_ids, src_lengths, tgt_in)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    torch.testing.assert_close(model.decoder.output.weight.grad, seed_style.decoder.lm_linear.weight.grad,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.encoder.rnn.weight_ih_l0.grad, seed_style.encoder.rnn.weight_ih_l0.grad,
                               rtol=1e-4, atol=1e-6)
    query_grad = seed_style.decoder.att.attn.weight.grad[:, :10]
    torch.testing.assert_close(model.decoder.attention.query_proj.weight.grad, query_grad, rtol=1e-4, atol=1e-6)


def test_training_steps_match_the_straightforward_path():
    """A few Adam steps through each path from the same weights end at the same dev loss."""
    from seq2seq_cli.loss import sequence_loss

    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=8, hidden_size=10, dropout=0.0, output_dim=6), 30, 25, pad_id=0)
    seed_style = reference.from_s2s(model)
    batches = []
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):  # equal source lengths within a batch: no padding for the unpacked encoder
        src_ids, src_lengths = pad_sources(torch.randint(4, 30, (3, 5), generator=generator).tolist(), 0, 3)
        tgt = torch.randint(4, 25, (3, 6), generator=generator)
        batches.append((src_ids, src_lengths, tgt[:, :-1], tgt[:, 1:]))
    losses = []
    for net in (model, seed_style):
        optimizer = torch.optim.AdamW(net.parameters(), lr=0.01)
        for src_ids, src_lengths, tgt_in, tgt_out in batches[:3]:
            loss = sequence_loss(net(src_ids, src_lengths, tgt_in), tgt_out, 0, 0.1) / tgt_out.numel()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        src_ids, src_lengths, tgt_in, tgt_out = batches[3]
        with torch.no_grad():
            losses.append(float(sequence_loss(net(src_ids, src_lengths, tgt_in), tgt_out, 0)))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
