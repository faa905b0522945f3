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
