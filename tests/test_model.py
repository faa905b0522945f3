import pytest
import torch

from seq2seq_cli.config import ModelConfig
from seq2seq_cli.data import pad_sources
from seq2seq_cli.model import build_model, embedding_table

PAD, BOS, EOS = 0, 2, 3


def make_model(**changes):
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=12, hidden_size=10, dropout=0.0, **changes)
    return build_model(config, src_vocab_size=30, tgt_vocab_size=25, pad_id=PAD).eval()


@pytest.mark.parametrize("changes", [{}, {"encoder_layers": 2, "output_dim": 7, "attention_dim": 5}])
def test_shapes(changes):
    model = make_model(**changes)
    src_ids, src_lengths = pad_sources([[5, 6, 7], [8]], PAD, EOS)
    tgt_in = torch.tensor([[BOS, 9, 10, 11], [BOS, 12, PAD, PAD]])
    assert model(src_ids, src_lengths, tgt_in).shape == (2, 4, 25)
    state = model.encode(src_ids, src_lengths)
    assert state.encoder_outputs.shape == (2, 4, 20)
    assert state.hidden.shape == (2, 10)
    assert state.src_mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_batch_of_one():
    model = make_model()
    src_ids, src_lengths = pad_sources([[5]], PAD, EOS)
    assert model(src_ids, src_lengths, torch.tensor([[BOS]])).shape == (1, 1, 25)


def test_padding_and_batch_partners_do_not_change_outputs():
    """A sentence's logits are the same alone and next to a longer, padded partner."""
    model = make_model(encoder_layers=2)
    alone_src, alone_len = pad_sources([[5, 6]], PAD, EOS)
    alone = model(alone_src, alone_len, torch.tensor([[BOS, 9, 10]]))
    pair_src, pair_len = pad_sources([[5, 6], [7, 8, 9, 10, 11, 12]], PAD, EOS)
    paired = model(pair_src, pair_len, torch.tensor([[BOS, 9, 10, PAD, PAD], [BOS, 1, 2, 3, 4]]))
    torch.testing.assert_close(paired[0, :3], alone[0], rtol=1e-5, atol=1e-6)


def test_attention_ignores_padding():
    model = make_model()
    src_ids, src_lengths = pad_sources([[5, 6, 7, 8], [9]], PAD, EOS)
    state = model.encode(src_ids, src_lengths)
    embedded = model.decoder.embed(torch.tensor([BOS, BOS]))
    _, _, weights = model.decoder.step(embedded, state.hidden, state)
    assert torch.all(weights[1, 2:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


@pytest.mark.parametrize("changes", [{}, {"attention_dim": 5, "output_dim": 12, "tie_embeddings": "output"}])
def test_the_training_loop_computes_the_decoding_step(changes):
    """Teacher forcing runs the recurrence rearranged for fewer operations per token (the gold
    tokens' share of the GRU input for all T at once, one product of the previous state): its
    logits and every gradient equal ``step`` fed the same tokens one at a time, nn.GRUCell and
    all, padding included."""
    model = make_model(**changes)
    src_ids, src_lengths = pad_sources([[5, 6, 7, 8], [9]], PAD, EOS)
    tgt_in = torch.tensor([[BOS, 9, 10, 11, 12], [BOS, 13, 14, PAD, PAD]])
    weights = torch.randn(2, 5, 25, generator=torch.Generator().manual_seed(1))

    def stepwise():
        state = model.encode(src_ids, src_lengths)
        hidden, features = state.hidden, []
        for embedded in model.decoder.embed(tgt_in).unbind(1):
            step_features, hidden, _ = model.decoder.step(embedded, hidden, state)
            features.append(step_features)
        return model.decoder.logits(torch.stack(features, 1))

    results = []
    for run in (lambda: model(src_ids, src_lengths, tgt_in), stepwise):
        model.zero_grad()
        logits = run()
        (logits * weights).sum().backward()
        results.append((logits, {name: p.grad.clone() for name, p in model.named_parameters()}))
    (fused, fused_grads), (reference, reference_grads) = results
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_teacher_forcing_ratio_zero_feeds_predictions():
    model = make_model()
    src_ids, src_lengths = pad_sources([[5, 6, 7]], PAD, EOS)
    tgt_in = torch.tensor([[BOS, 9, 10, 11]])
    forced = model(src_ids, src_lengths, tgt_in, teacher_forcing_ratio=1.0)
    free = model(src_ids, src_lengths, tgt_in, teacher_forcing_ratio=0.0)
    torch.testing.assert_close(free[:, 0], forced[:, 0])  # the first step always reads [CLS]
    # Feeding the model's own argmax is what free-running means: rebuild it step by step.
    manual = model(src_ids, src_lengths, torch.cat([tgt_in[:, :1], free[:, :-1].argmax(-1)], dim=1))
    torch.testing.assert_close(free, manual)
    assert not torch.allclose(free, forced)


def test_bert_embeddings_are_copied_with_a_projection():
    bert = torch.randn(30, 8)
    config = ModelConfig(embed_dim=12, hidden_size=10, dropout=0.0, embed_type="bert", bert_model="x")
    model = build_model(config, 30, 30, PAD, bert_embeddings=bert)
    torch.testing.assert_close(embedding_table(model.encoder.embedding).weight, bert)
    torch.testing.assert_close(embedding_table(model.decoder.embedding).weight, bert)
    src_ids, src_lengths = pad_sources([[5, 6]], PAD, EOS)
    assert model(src_ids, src_lengths, torch.tensor([[BOS, 4]])).shape == (1, 2, 30)


@pytest.mark.parametrize("tie", ["output", "all"])
def test_tied_embeddings_share_one_matrix_through_training_and_saving(tie, tmp_path):
    def make(**changes):
        torch.manual_seed(0)
        return build_model(ModelConfig(embed_dim=12, hidden_size=10, output_dim=12, **changes), 30, 30, PAD)

    untied, tied = make(), make(tie_embeddings=tie)
    shared = tied.decoder.embedding.weight
    assert tied.decoder.output.weight is shared
    assert (tied.encoder.embedding.weight is shared) == (tie == "all")
    saved = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert saved == shared.numel() * (2 if tie == "all" else 1)
    src_ids, src_lengths = pad_sources([[5, 6, 7], [8, 9]], 0, 3)
    tgt_in = torch.tensor([[2, 5, 6], [2, 7, 0]])
    optimizer = torch.optim.AdamW(tied.parameters(), lr=0.1)
    tied(src_ids, src_lengths, tgt_in).sum().backward()
    optimizer.step()
    assert tied.decoder.output.weight is tied.decoder.embedding.weight
    torch.save(tied.state_dict(), tmp_path / "tied.pt")
    reloaded = make(tie_embeddings=tie)
    reloaded.load_state_dict(torch.load(tmp_path / "tied.pt", weights_only=True))
    tied.eval(), reloaded.eval()
    assert torch.equal(reloaded(src_ids, src_lengths, tgt_in), tied(src_ids, src_lengths, tgt_in))
    assert reloaded.decoder.output.weight is reloaded.decoder.embedding.weight
