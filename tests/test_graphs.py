"""The padding that CUDA graphs need changes nothing that matters; checked on the CPU.

A graph replays fixed shapes, so a graphed step pads each batch to its shape
(``data.padded_shape``) and runs the encoder unpacked. The loss and every gradient must be
those of the batch as the eager step sees it. Capture itself needs a GPU (tests/test_cuda.py).
"""

from types import SimpleNamespace

import pytest
import torch

from seq2seq_cli.config import ModelConfig
from seq2seq_cli.data import collate, pad_batch, padded_shape
from seq2seq_cli.loss import sequence_loss
from seq2seq_cli.model import build_model

SPECIAL = SimpleNamespace(pad_id=0, bos_id=2, eos_id=3)


def loss_and_gradients(model, batch, packed: bool):
    model.zero_grad(set_to_none=True)
    logits = model(batch.src_ids, batch.src_lengths, batch.tgt_in, packed=packed)
    loss = sequence_loss(logits, batch.tgt_out, SPECIAL.pad_id, label_smoothing=0.1) / batch.n_tgt_tokens
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("layers", [1, 2])
def test_a_batch_padded_to_its_graph_shape_has_the_batchs_loss_and_gradients(layers):
    torch.manual_seed(layers)
    model = build_model(ModelConfig(embed_dim=16, hidden_size=24, encoder_layers=layers, dropout=0.0, output_dim=12),
                        50, 40, pad_id=0)
    generator = torch.Generator().manual_seed(7)
    src = [torch.randint(4, 50, (n,), generator=generator).tolist() for n in (9, 2, 13, 5, 1)]
    tgt = [torch.randint(4, 40, (n,), generator=generator).tolist() for n in (11, 3, 6, 14, 1)]
    batch = collate(src, tgt, SPECIAL)
    shape = padded_shape(batch, batch_tokens=200)
    # Lengths 14 and 15 round up to 16; a batch that rounds to 16 is at least 13 wide: 15 rows.
    assert shape == (15, 16, 16)
    padded = pad_batch(batch, shape, SPECIAL)
    assert (padded.src_ids.shape, padded.tgt_in.shape) == ((15, 16), (15, 16))
    assert padded.n_tgt_tokens == batch.n_tgt_tokens == int((padded.tgt_out != 0).sum())

    loss, gradients = loss_and_gradients(model, batch, packed=True)
    padded_loss, padded_gradients = loss_and_gradients(model, padded, packed=False)
    torch.testing.assert_close(padded_loss, loss, rtol=1e-6, atol=1e-7)
    assert gradients.keys() == padded_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(padded_gradients[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_every_batch_of_a_token_budget_fits_its_shape_and_shapes_stay_few():
    from seq2seq_cli.data import TokenBatches

    generator = torch.Generator().manual_seed(0)
    # Lengths as in Multi30k's subwords (a target near its source's length), short ones too.
    src_lengths = torch.randint(1, 50, (3000,), generator=generator)
    tgt_lengths = (src_lengths + torch.randint(-4, 5, (3000,), generator=generator)).clamp(min=1)
    lengths = torch.stack([src_lengths, tgt_lengths], 1).tolist()
    corpus = SimpleNamespace(
        lengths=lambda: tuple(torch.tensor(column).numpy() for column in zip(*lengths)),
        pairs=lambda indices: ([[5] * lengths[i][0] for i in indices], [[5] * lengths[i][1] for i in indices]))
    batches = TokenBatches(corpus, SPECIAL, batch_tokens=1000, seed=1)
    shapes, padded_tokens, batch_tokens = set(), 0, 0
    for indices in batches.epoch_batches(0):
        batch = batches.make_batch(indices)
        shape = padded_shape(batch, 1000)
        assert shape[0] >= batch.src_ids.size(0)
        assert shape[1] >= batch.src_ids.size(1) and shape[2] >= batch.tgt_in.size(1)
        assert shape[0] * max(shape[1:]) <= 1000 * 2
        shapes.add(shape)
        padded_tokens += shape[0] * max(shape[1:])
        batch_tokens += batch.src_ids.size(0) * max(batch.src_ids.size(1), batch.tgt_in.size(1))
    assert len(shapes) <= 60
    assert padded_tokens < 1.5 * batch_tokens
