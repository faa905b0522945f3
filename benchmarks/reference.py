"""A plain implementation of the same model, written the way the seed notebook wrote it.

It is the yardstick for benchmarks/speed.py, so it keeps the seed's ways of working:
attention concatenates the repeated decoder state with every encoder output at every step,
a one-step ``nn.GRU`` runs in a Python loop with the vocabulary projection inside it, the
encoder reads padded batches without packing, and batches are sentences in file order. It
decodes one sentence at a time. The seed's bugs are fixed (teacher forcing feeds the gold
token, the loss skips padding, nothing squeezes away a batch of one), and attention is
masked, so given the same weights it computes the same function as ``seq2seq_cli.model`` on
sentences without padding (padding changes the unpacked backward LSTM, as in the seed).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Encoder(nn.Module):
    def __init__(self, vocab_size, embed_dim, hidden_size, dropout, pad_id):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = nn.LSTM(embed_dim, hidden_size, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(hidden_size * 2, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src_ids, src_lengths):
        embedded = self.dropout(self.embedding(src_ids))
        outputs, (hn, _) = self.rnn(embedded)
        # Without packing the final states would be read after the padding; take each
        # direction's state at the sentence's real end instead.
        last = (src_lengths - 1).to(src_ids.device)
        size = outputs.size(-1) // 2
        forward_final = outputs[torch.arange(outputs.size(0)), last, :size]
        backward_final = outputs[:, 0, size:]
        hidden = torch.tanh(self.fc(torch.cat([forward_final, backward_final], dim=-1)))
        return self.dropout(outputs), hidden


class Attention(nn.Module):
    def __init__(self, enc_dim, dec_dim, attention_dim):
        super().__init__()
        self.attn = nn.Linear(enc_dim + dec_dim, attention_dim)
        self.v = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, hidden, encoder_outputs, mask):
        seqlen = encoder_outputs.size(1)
        repeated = hidden.unsqueeze(1).repeat(1, seqlen, 1)
        energy = torch.tanh(self.attn(torch.cat((repeated, encoder_outputs), dim=2)))
        scores = self.v(energy).squeeze(2).masked_fill(~mask, float("-inf"))
        return F.softmax(scores, dim=1)


class Decoder(nn.Module):
    def __init__(self, vocab_size, embed_dim, hidden_size, attention_dim, output_dim, dropout, pad_id):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.att = Attention(hidden_size * 2, hidden_size, attention_dim)
        self.rnn = nn.GRU(hidden_size * 2 + embed_dim, hidden_size, batch_first=True)
        features = hidden_size * 3 + embed_dim
        self.pre_output = nn.Linear(features, output_dim) if output_dim else None
        self.lm_linear = nn.Linear(output_dim or features, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, token, hidden, encoder_outputs, mask):
        embedded = self.dropout(self.embedding(token)).unsqueeze(1)  # (B, 1, E)
        weights = self.att(hidden, encoder_outputs, mask)
        context = weights.unsqueeze(1) @ encoder_outputs  # (B, 1, 2H)
        output, new_hidden = self.rnn(torch.cat([context, embedded], dim=-1), hidden.unsqueeze(0))
        features = self.dropout(torch.cat([output, context, embedded], dim=-1).squeeze(1))
        if self.pre_output is not None:
            features = torch.tanh(self.pre_output(features))
        return self.lm_linear(features), new_hidden.squeeze(0)


class Seq2Seq(nn.Module):
    def __init__(self, src_vocab, tgt_vocab, embed_dim, hidden_size, attention_dim, output_dim, dropout, pad_id):
        super().__init__()
        self.pad_id = pad_id
        self.encoder = Encoder(src_vocab, embed_dim, hidden_size, dropout, pad_id)
        self.decoder = Decoder(tgt_vocab, embed_dim, hidden_size, attention_dim, output_dim, dropout, pad_id)

    def forward(self, src_ids, src_lengths, tgt_in):
        encoder_outputs, hidden = self.encoder(src_ids, src_lengths)
        mask = src_ids != self.pad_id
        outputs = []
        for t in range(tgt_in.size(1)):
            logits, hidden = self.decoder(tgt_in[:, t], hidden, encoder_outputs, mask)
            outputs.append(logits)
        return torch.stack(outputs, dim=1)

    @torch.inference_mode()
    def greedy(self, src_ids, bos, eos, max_len):
        """One sentence: src_ids (1, S)."""
        encoder_outputs, hidden = self.encoder(src_ids, torch.tensor([src_ids.size(1)]))
        mask = src_ids != self.pad_id
        token, output = torch.tensor([bos], device=src_ids.device), []
        for _ in range(max_len):
            logits, hidden = self.decoder(token, hidden, encoder_outputs, mask)
            token = logits.argmax(-1)
            if token.item() == eos:
                break
            output.append(token.item())
        return output

    @torch.inference_mode()
    def beam(self, src_ids, bos, eos, max_len, beam_size, alpha=1.0):
        """One sentence: the beams of the sentence form the batch; stops at beam_size finished."""
        encoder_outputs, hidden = self.encoder(src_ids, torch.tensor([src_ids.size(1)]))
        mask = src_ids != self.pad_id
        beams = [([], 0.0, hidden[0])]
        finished = []
        for step in range(max_len + 1):
            tokens = torch.tensor([b[0][-1] if b[0] else bos for b in beams], device=src_ids.device)
            hiddens = torch.stack([b[2] for b in beams])
            count = len(beams)
            logits, new_hidden = self.decoder(tokens, hiddens, encoder_outputs.expand(count, -1, -1),
                                              mask.expand(count, -1))
            log_probs = F.log_softmax(logits.float(), dim=-1)
            candidates = []
            for i, (sequence, score, _) in enumerate(beams):
                values, indices = log_probs[i].topk(beam_size)
                for value, index in zip(values.tolist(), indices.tolist()):
                    candidates.append((score + value, sequence + [index], i))
            candidates.sort(key=lambda c: c[0], reverse=True)
            beams = []
            for score, sequence, parent in candidates:
                if sequence[-1] == eos or step == max_len:
                    finished.append((score / ((5 + len(sequence)) / 6) ** alpha, sequence[:-1]))
                else:
                    beams.append((sequence, score, new_hidden[parent]))
                if len(beams) == beam_size:
                    break
            if len(finished) >= beam_size or not beams:
                break
        return max(finished)[1]


def from_s2s(model) -> Seq2Seq:
    """A reference model holding exactly the weights of a ``seq2seq_cli`` model."""
    encoder, decoder = model.encoder, model.decoder
    reference = Seq2Seq(encoder.embedding.num_embeddings, decoder.embedding.num_embeddings,
                        encoder.embedding.embedding_dim, encoder.rnn.hidden_size,
                        decoder.attention.v.in_features,
                        decoder.pre_output.out_features if decoder.pre_output is not None else 0,
                        encoder.dropout.p, model.pad_id)
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith("encoder.") and not name.startswith("encoder.bridge"):
            state[name] = value
    state["encoder.fc.weight"], state["encoder.fc.bias"] = encoder.bridge.weight, encoder.bridge.bias
    state["decoder.embedding.weight"] = decoder.embedding.weight
    state["decoder.att.attn.weight"] = torch.cat([decoder.attention.query_proj.weight,
                                                  decoder.attention.key_proj.weight], dim=1)
    state["decoder.att.attn.bias"] = decoder.attention.key_proj.bias
    state["decoder.att.v.weight"] = decoder.attention.v.weight
    for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        state[f"decoder.rnn.{part}_l0"] = getattr(decoder.rnn, part)
    if decoder.pre_output is not None:
        state["decoder.pre_output.weight"], state["decoder.pre_output.bias"] = (
            decoder.pre_output.weight, decoder.pre_output.bias)
    state["decoder.lm_linear.weight"], state["decoder.lm_linear.bias"] = decoder.output.weight, decoder.output.bias
    reference.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return reference
