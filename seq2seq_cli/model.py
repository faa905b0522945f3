"""The attention RNN translator (Bahdanau et al., 2015), read top to bottom.

Encoder: embeddings -> bidirectional LSTM over packed sequences. Its last layer's final
forward and backward states, through tanh(Linear), start the decoder. Packing reads the
lengths on the host; a step replayed from a CUDA graph cannot, so ``packed=False`` runs each
direction over the padded batch instead, the backward one on each sentence reversed within
its length, which gives the packed outputs wherever a sentence has tokens.

Attention: additive, ``v^T tanh(W_h h + W_e e)``. The encoder side ``W_e e`` is projected once
per batch (``keys``), not once per decoder step, and source padding is masked out by adding
-inf to its scores (``score_bias``, also made once per batch).

Decoder: a GRU cell fed ``[context; embedded previous token]``; the output layer reads
``[gru output; context; embedded]``, optionally through a smaller tanh layer first
(``output_dim``). Search runs it one token at a time (``step``); training on gold tokens runs
the same arithmetic rearranged into fewer, larger operations per token (``teacher_forced``).

Shapes: B batch, S source length, T target length, E embedding, H hidden size,
A attention size, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq_cli.config import ModelConfig
from seq2seq_cli.errors import UserError
from seq2seq_cli.loss import output_layer_loss, sequence_loss


def make_embedding(vocab_size: int, embed_dim: int, pad_id: int, pretrained_dim: int = 0) -> nn.Module:
    """A token embedding; with ``pretrained_dim`` a table of that width projected to ``embed_dim``."""
    if pretrained_dim and pretrained_dim != embed_dim:
        return nn.Sequential(nn.Embedding(vocab_size, pretrained_dim, padding_idx=pad_id),
                             nn.Linear(pretrained_dim, embed_dim, bias=False))
    return nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)


def embedding_table(embedding: nn.Module) -> nn.Embedding:
    return embedding[0] if isinstance(embedding, nn.Sequential) else embedding


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int, pretrained_dim: int = 0):
        super().__init__()
        self.embedding = make_embedding(vocab_size, config.embed_dim, pad_id, pretrained_dim)
        self.rnn = nn.LSTM(config.embed_dim, config.hidden_size, num_layers=config.encoder_layers,
                           batch_first=True, bidirectional=True,
                           dropout=config.dropout if config.encoder_layers > 1 else 0.0)
        self.bridge = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor,
                packed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.dropout(self.embedding(src_ids))  # (B, S, E)
        if packed:
            packed_inputs = pack_padded_sequence(embedded, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_outputs, (final_hidden, _) = self.rnn(packed_inputs)
            encoder_outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True,
                                                     total_length=src_ids.size(1))  # (B, S, 2H)
            # final_hidden: (layers * 2, B, H); the last two rows are the top layer's two directions.
            final = torch.cat([final_hidden[-2], final_hidden[-1]], dim=-1)  # (B, 2H)
        else:
            encoder_outputs, final = self._unpacked(embedded, src_lengths.to(embedded.device))
        decoder_hidden = torch.tanh(self.bridge(final))  # (B, H)
        return self.dropout(encoder_outputs), decoder_hidden

    def _unpacked(self, embedded: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed LSTM's outputs (B, S, 2H) and top-layer final states (B, 2H), with every
        operation's shape fixed by the padded batch and the lengths read on the device.

        Outputs at padding positions are not zero as packing leaves them; attention masks them."""
        rnn, (batch, steps) = self.rnn, embedded.shape[:2]
        positions = torch.arange(steps, device=embedded.device)
        lengths = src_lengths.unsqueeze(1)  # (B, 1)
        # Position t of a sentence of n tokens swaps with n-1-t; padding stays where it is. The
        # map is its own inverse, so one gather reverses and a second puts back.
        reverse = torch.where(positions < lengths, lengths - 1 - positions, positions)  # (B, S)
        layer_input = embedded
        for layer in range(rnn.num_layers):
            directions = []
            for suffix in ("", "_reverse"):
                weights = [getattr(rnn, f"{kind}_l{layer}{suffix}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                inputs = layer_input if not suffix else layer_input.gather(
                    1, reverse.unsqueeze(2).expand(-1, -1, layer_input.size(2)))
                zeros = inputs.new_zeros(1, batch, rnn.hidden_size)
                outputs = torch.lstm(inputs, (zeros, zeros), weights, True, 1, 0.0, self.training, False, True)[0]
                if suffix:
                    outputs = outputs.gather(1, reverse.unsqueeze(2).expand(-1, -1, outputs.size(2)))
                directions.append(outputs)  # (B, S, H)
            layer_input = torch.cat(directions, dim=-1)  # (B, S, 2H)
            if layer + 1 < rnn.num_layers:
                layer_input = F.dropout(layer_input, rnn.dropout, self.training)
        forward_outputs, backward_outputs = directions
        # The forward direction ends on a sentence's last token, the backward one on its first.
        last = (src_lengths - 1).view(batch, 1, 1).expand(-1, 1, rnn.hidden_size)
        final = torch.cat([forward_outputs.gather(1, last).squeeze(1), backward_outputs[:, 0]], dim=-1)  # (B, 2H)
        return layer_input, final


class AdditiveAttention(nn.Module):
    def __init__(self, query_dim: int, key_dim: int, attention_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)
        self.key_proj = nn.Linear(key_dim, attention_dim)
        self.v = nn.Linear(attention_dim, 1, bias=False)

    def project_keys(self, encoder_outputs: torch.Tensor) -> torch.Tensor:
        return self.key_proj(encoder_outputs)  # (B, S, A), once per batch

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                score_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, H), keys (B, S, A), values (B, S, 2H), score_bias (B, S): 0 on real tokens,
        -inf on padding."""
        return self.attend(self.query_proj(query), keys, values, score_bias)

    def attend(self, projected_query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               score_bias: torch.Tensor, v_weight: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` from the query already projected, (B, A); ``v_weight``: ``v``'s weight
        already in the products' dtype (training casts it once, not at every token)."""
        # tanh in place: (B, S, A) is the largest tensor of a decoder step; one fewer of them.
        energy = (keys + projected_query.unsqueeze(1)).tanh_()  # (B, S, A)
        scored = self.v(energy) if v_weight is None else F.linear(energy, v_weight)  # (B, S, 1)
        scores = scored.squeeze(2) + score_bias  # (B, S)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1).to(values.dtype), values).squeeze(1)  # (B, 2H)
        return context, weights


@dataclass
class EncoderState:
    """What every decoder step reads; ``select`` reorders it for beams or finished rows."""

    encoder_outputs: torch.Tensor  # (B, S, 2H)
    keys: torch.Tensor  # (B, S, A)
    src_mask: torch.Tensor  # (B, S) True on real tokens
    hidden: torch.Tensor  # (B, H), the decoder's initial state
    score_bias: Optional[torch.Tensor] = None  # (B, S) 0 on real tokens, -inf on padding

    def __post_init__(self):
        if self.score_bias is None:
            self.score_bias = torch.zeros(self.src_mask.shape, device=self.src_mask.device).masked_fill(
                ~self.src_mask, float("-inf"))

    def select(self, index: torch.Tensor) -> "EncoderState":
        return EncoderState(*(tensor.index_select(0, index) for tensor in (
            self.encoder_outputs, self.keys, self.src_mask, self.hidden, self.score_bias)))


def gru_update(input_gates: torch.Tensor, hidden_gates: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """A GRU cell's new state (B, H) from its input and hidden projections (B, 3H), biases
    included, gates in ``nn.GRUCell``'s order (reset, update, new).

    On CUDA this is the fused kernel ``nn.GRUCell`` runs there (one launch forward, one
    backward); elsewhere the same arithmetic written out."""
    if input_gates.is_cuda:
        return torch.ops.aten._thnn_fused_gru_cell(input_gates, hidden_gates, hidden.to(input_gates.dtype))[0]
    input_reset, input_update, input_new = input_gates.chunk(3, 1)
    hidden_reset, hidden_update, hidden_new = hidden_gates.chunk(3, 1)
    reset = (input_reset + hidden_reset).sigmoid_()
    update = (input_update + hidden_update).sigmoid_()
    new = (input_new + reset * hidden_new).tanh_()
    return (hidden - new).mul_(update).add_(new)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int, pretrained_dim: int = 0):
        super().__init__()
        hidden, context_dim = config.hidden_size, 2 * config.hidden_size
        self.embedding = make_embedding(vocab_size, config.embed_dim, pad_id, pretrained_dim)
        self.attention = AdditiveAttention(hidden, context_dim, config.attention_dim or hidden)
        self.rnn = nn.GRUCell(context_dim + config.embed_dim, hidden)
        features = hidden + context_dim + config.embed_dim
        self.pre_output = nn.Linear(features, config.output_dim) if config.output_dim else None
        self.output = nn.Linear(config.output_dim or features, vocab_size)
        if config.tie_embeddings != "none":  # one (V, E) matrix embeds and scores target tokens
            # N(0, 1/E) as in fairseq's shared embeddings: N(0, 1) rows would start the logits
            # at a standard deviation of sqrt(E).
            nn.init.normal_(self.embedding.weight, std=config.embed_dim ** -0.5)
            with torch.no_grad():
                self.embedding.weight[pad_id].zero_()
            self.output.weight = self.embedding.weight
        self.dropout = nn.Dropout(config.dropout)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(tokens))

    def recur(self, embedded: torch.Tensor, hidden: torch.Tensor, state: EncoderState):
        """Attention and the GRU cell, from the previous token's embedding (B, E) and state (B, H).

        Returns the new hidden state (B, H), the context (B, 2H) and the attention weights (B, S)."""
        context, weights = self.attention(hidden, state.keys, state.encoder_outputs, state.score_bias)
        hidden = self.rnn(torch.cat([context, embedded], dim=-1), hidden)
        return hidden, context, weights

    def teacher_forced(self, gold_embedded: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """``recur`` over all T gold tokens (B, T, E): the hidden states (B, T, H) and contexts
        (B, T, 2H) after each.

        The same arithmetic as calling ``recur`` token by token, arranged so that the loop holds
        as few operations as it can (each is a kernel launch on a GPU, forward and backward):
        the gold tokens' share of the GRU's input projection is one product for all T before the
        loop, and the two products of the previous state, attention's query and the GRU's hidden
        gates, are one product per token."""
        rnn, attention = self.rnn, self.attention
        query_dim, gates_dim = attention.query_proj.out_features, rnn.weight_hh.size(0)
        context_weight, embedded_weight = rnn.weight_ih.split(
            [state.encoder_outputs.size(-1), gold_embedded.size(-1)], dim=1)
        embedded_gates = F.linear(gold_embedded, embedded_weight, rnn.bias_ih)  # (B, T, 3H)
        # What every token reads, in the products' dtype (bf16 under autocast) once, rather than
        # autocast casting it again at every token (and back in the backward pass).
        dtype = embedded_gates.dtype
        state_weight = torch.cat([attention.query_proj.weight, rnn.weight_hh]).to(dtype)  # (A + 3H, H)
        state_bias = torch.cat([rnn.bias_hh.new_zeros(query_dim), rnn.bias_hh]).to(dtype)
        context_weight = context_weight.t().to(dtype)  # (2H, 3H)
        v_weight, values = attention.v.weight.to(dtype), state.encoder_outputs.to(dtype)
        hidden, hiddens, contexts = state.hidden, [], []
        for gates in embedded_gates.unbind(1):
            query, hidden_gates = F.linear(hidden, state_weight, state_bias).split([query_dim, gates_dim], dim=1)
            context, _ = attention.attend(query, state.keys, values, state.score_bias, v_weight)
            hidden = gru_update(torch.addmm(gates, context, context_weight), hidden_gates, hidden)
            hiddens.append(hidden)
            contexts.append(context)
        return torch.stack(hiddens, 1), torch.stack(contexts, 1)

    def step(self, embedded: torch.Tensor, hidden: torch.Tensor, state: EncoderState):
        """``recur``, then the output-layer features (B, F) of the step, the new hidden state
        (B, H) and the attention weights (B, S): one token at a time, for search."""
        hidden, context, weights = self.recur(embedded, hidden, state)
        return torch.cat([hidden, context, embedded], dim=-1), hidden, weights

    def output_inputs(self, features: torch.Tensor) -> torch.Tensor:
        """What the output layer reads, (..., F) -> (..., output_dim or F)."""
        features = self.dropout(features)
        if self.pre_output is not None:
            features = torch.tanh(self.pre_output(features))
        return features

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(..., F) -> (..., V); runs once over all steps when the gold tokens are fed."""
        return self.output(self.output_inputs(features))


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int,
                 pretrained_dim: int = 0):
        super().__init__()
        self.pad_id = pad_id
        # What a checkpoint stores ("model_args") to rebuild this model beside its config.
        self.sizes = {"src_vocab_size": src_vocab_size, "tgt_vocab_size": tgt_vocab_size, "pad_id": pad_id,
                      "pretrained_dim": pretrained_dim}
        self.encoder = Encoder(config, src_vocab_size, pad_id, pretrained_dim)
        self.decoder = Decoder(config, tgt_vocab_size, pad_id, pretrained_dim)
        if config.tie_embeddings == "all":
            if src_vocab_size != tgt_vocab_size:
                raise UserError("model.tie_embeddings=all needs one vocabulary for both languages, but the "
                                f"source has {src_vocab_size} tokens and the target {tgt_vocab_size}")
            self.encoder.embedding.weight = self.decoder.embedding.weight

    def encode(self, src_ids: torch.Tensor, src_lengths: torch.Tensor, packed: bool = True) -> EncoderState:
        encoder_outputs, hidden = self.encoder(src_ids, src_lengths, packed)
        keys = self.decoder.attention.project_keys(encoder_outputs)
        return EncoderState(encoder_outputs, keys, src_ids != self.pad_id, hidden)

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor,
                teacher_forcing_ratio: float = 1.0, packed: bool = True, tgt_out: Optional[torch.Tensor] = None,
                label_smoothing: float = 0.0) -> torch.Tensor:
        """Logits (B, T, V) for predicting each next target token; given the targets ``tgt_out``
        (B, T), their summed loss instead (``sequence_loss`` of the logits).

        With ``teacher_forcing_ratio`` < 1 each sentence is fed, at each step and with that
        probability, the gold previous token, else the model's own previous prediction.
        ``packed=False``: nothing reads the host (see the encoder), for CUDA graphs."""
        state = self.encode(src_ids, src_lengths, packed)
        hidden = state.hidden
        gold_embedded = self.decoder.embed(tgt_in)  # (B, T, E)
        steps = tgt_in.size(1)
        if teacher_forcing_ratio >= 1.0:
            # Only the recurrence runs per token; the output layer's inputs are joined and the
            # logits computed once for all T.
            hiddens, contexts = self.decoder.teacher_forced(gold_embedded, state)
            features = torch.cat([hiddens, contexts, gold_embedded], dim=-1)  # (B, T, F)
            if tgt_out is not None and features.device.type == "cpu":
                # The CPU's memory bandwidth, not its arithmetic, limits the vocabulary-wide
                # passes of the loss; a GPU runs them from the logits (and its graphs replay them).
                return output_layer_loss(self.decoder.output_inputs(features), self.decoder.output, tgt_out,
                                         self.pad_id, label_smoothing)
            logits = self.decoder.logits(features)  # (B, T, V)
        else:
            logits, embedded = [], gold_embedded[:, 0]
            for t in range(steps):
                step_features, hidden, _ = self.decoder.step(embedded, hidden, state)
                step_logits = self.decoder.logits(step_features)  # (B, V)
                logits.append(step_logits)
                if t + 1 < steps:
                    use_gold = torch.rand(tgt_in.size(0), 1, device=tgt_in.device) < teacher_forcing_ratio
                    predicted = self.decoder.embed(step_logits.argmax(-1))
                    embedded = torch.where(use_gold, gold_embedded[:, t + 1], predicted)
            logits = torch.stack(logits, dim=1)
        return logits if tgt_out is None else sequence_loss(logits, tgt_out, self.pad_id, label_smoothing)


def load_bert_embeddings(name_or_path: str) -> torch.Tensor:
    """The word-embedding matrix (V, D) of a pretrained BertModel, loaded offline."""
    from transformers import BertModel

    try:
        bert = BertModel.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"model.bert_model: cannot load BertModel {name_or_path!r} "
                        f"({str(err).splitlines()[0]})") from None
    return bert.embeddings.word_embeddings.weight.detach().clone()


def build_model(config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int,
                bert_embeddings: Optional[torch.Tensor] = None) -> Seq2Seq:
    """A fresh model; with ``bert_embeddings`` both embedding tables start from BERT's."""
    pretrained_dim = 0 if bert_embeddings is None else bert_embeddings.size(1)
    model = Seq2Seq(config, src_vocab_size, tgt_vocab_size, pad_id, pretrained_dim)
    if bert_embeddings is not None:
        for side, size in (("source", src_vocab_size), ("target", tgt_vocab_size)):
            if bert_embeddings.size(0) != size:
                raise UserError(f"model.bert_model has {bert_embeddings.size(0)} embeddings but the {side} "
                                f"vocabulary has {size}; use the BERT model's own tokenizer")
        with torch.no_grad():
            for module in (model.encoder.embedding, model.decoder.embedding):
                embedding_table(module).weight.copy_(bert_embeddings)
    return model
