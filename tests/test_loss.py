"""The loss without logits (the CPU's training loss) against cross-entropy of the logits."""

import pytest
import torch

from seq2seq_cli.config import ModelConfig
from seq2seq_cli.data import pad_sources
from seq2seq_cli.loss import output_layer_loss, sequence_loss
from seq2seq_cli.model import build_model

PAD, EOS = 0, 3


def padded_targets(batch: int, steps: int, vocab: int) -> torch.Tensor:
    targets = torch.randint(1, vocab, (batch, steps))
    for row, length in enumerate(torch.randint(1, steps + 1, (batch,)).tolist()):
        targets[row, length:] = PAD
    return targets


def loss_and_gradients(loss_of, tensors):
    for tensor in tensors:
        tensor.grad = None
    loss = loss_of()
    (loss * 0.37).backward()  # a scale, as the trainer's division by the batch's tokens
    return loss.detach(), [tensor.grad.clone() for tensor in tensors]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("rows_per_slice", [1, 7, None])
def test_the_loss_without_logits_equals_cross_entropy_of_the_logits(label_smoothing, rows_per_slice):
    torch.manual_seed(0)
    output = torch.nn.Linear(12, 50)
    features = torch.randn(4, 9, 12, requires_grad=True)
    targets = padded_targets(4, 9, 50)
    tensors = [features, output.weight, output.bias]
    expected_loss, expected = loss_and_gradients(
        lambda: sequence_loss(output(features), targets, PAD, label_smoothing), tensors)
    loss, gradients = loss_and_gradients(
        lambda: output_layer_loss(features, output, targets, PAD, label_smoothing, rows_per_slice), tensors)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for gradient, reference in zip(gradients, expected):
        torch.testing.assert_close(gradient, reference, rtol=1e-5, atol=1e-6)
    assert features.grad[targets == PAD].abs().max() == 0  # padding positions get nothing


def test_without_gradients_only_the_loss_is_computed():
    torch.manual_seed(0)
    output = torch.nn.Linear(12, 50)
    features, targets = torch.randn(3, 5, 12), padded_targets(3, 5, 50)
    with torch.no_grad():
        loss = output_layer_loss(features, output, targets, PAD, 0.1, rows_per_slice=4)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, sequence_loss(output(features), targets, PAD, 0.1).detach(), rtol=1e-5, atol=1e-5)


def tiny_model_and_batch():
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=16, hidden_size=16, output_dim=16, dropout=0.0, tie_embeddings="output")
    model = build_model(config, 40, 60, PAD)
    src_ids, src_lengths = pad_sources([torch.randint(4, 40, (n,)).tolist() for n in (6, 2, 4, 0, 5)], PAD, EOS)
    return model, (src_ids, src_lengths, torch.randint(1, 60, (5, 8))), padded_targets(5, 8, 60)


def test_the_model_given_targets_returns_the_loss_of_its_logits():
    """What the trainer calls: the loss from the model (tied output layer), in fp32."""
    model, inputs, tgt_out = tiny_model_and_batch()
    parameters = list(model.parameters())
    expected_loss, expected = loss_and_gradients(lambda: sequence_loss(model(*inputs), tgt_out, PAD, 0.1), parameters)
    loss, gradients = loss_and_gradients(lambda: model(*inputs, tgt_out=tgt_out, label_smoothing=0.1), parameters)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for gradient, reference in zip(gradients, expected):
        torch.testing.assert_close(gradient, reference, rtol=1e-4, atol=1e-6)


def test_under_bf16_autocast_the_loss_is_as_close_to_fp32_as_the_logits_loss():
    """Both round the same products to bf16; the loss without logits must not add error
    (it sums the output bias's gradient in fp32, so there it has less)."""
    model, inputs, tgt_out = tiny_model_and_batch()
    parameters = list(model.parameters())
    exact_loss, exact = loss_and_gradients(lambda: sequence_loss(model(*inputs), tgt_out, PAD, 0.1), parameters)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_loss, from_logits = loss_and_gradients(
            lambda: sequence_loss(model(*inputs), tgt_out, PAD, 0.1), parameters)
        loss, gradients = loss_and_gradients(lambda: model(*inputs, tgt_out=tgt_out, label_smoothing=0.1), parameters)
    assert abs(loss - exact_loss) <= 2 * abs(logits_loss - exact_loss) + 1e-3 * exact_loss
    for gradient, rounded, reference in zip(gradients, from_logits, exact):
        error, rounded_error = ((g - reference).norm() / reference.norm() for g in (gradient, rounded))
        assert error < 2 * rounded_error + 0.01
