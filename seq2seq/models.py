"""The three model families behind one interface.

    state = model.encode(src, src_lengths)
    log_probs, state, attention = model.decode_step(prev_ids, state)
    log_probs = model(src, src_lengths, tgt_in)          # teacher-forced, (B, T, V)

``state`` is a dict of tensors whose first dimension is the (batch x beam) row, so a
decoder reorders any family's state with one ``index_select`` per tensor
(``reorder_state``). ``attention`` is (rows, src_len) for the RNN attention models,
(rows, heads, src_len) for the Transformer's last cross-attention layer, and None for the
plain encoder-decoder, which has no attention by design: its single context vector is the
bottleneck that attention was invented to remove.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.config import ModelConfig, validate_model_config
from seq2seq.data.tokenizers import PAD

State = dict[str, torch.Tensor]


def reorder_state(state: State, rows: torch.Tensor) -> State:
    """Select (and repeat or reorder) rows of every tensor in a decoder state."""
    return {k: v.index_select(0, rows) for k, v in state.items()}


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension with masked-out (False) positions at exactly zero."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


class Seq2Seq(nn.Module):
    """Shared teacher forcing: gold inputs, or the model's own predictions with a ratio."""

    def forward(self, src, src_lengths, tgt_in, teacher_forcing: float = 1.0):
        if teacher_forcing >= 1.0:
            return self.forward_teacher(src, src_lengths, tgt_in)
        state = self.encode(src, src_lengths)
        prev, steps = tgt_in[:, 0], []
        for t in range(tgt_in.size(1)):
            log_probs, state, _ = self.decode_step(prev, state)
            steps.append(log_probs)
            if t + 1 < tgt_in.size(1):
                gold = torch.rand(prev.shape, device=prev.device) < teacher_forcing
                prev = torch.where(gold, tgt_in[:, t + 1], log_probs.argmax(-1))
        return torch.stack(steps, 1)

    def forward_teacher(self, src, src_lengths, tgt_in):
        """Default: the step loop with gold inputs; families override it with a faster path."""
        state = self.encode(src, src_lengths)
        steps = []
        for t in range(tgt_in.size(1)):
            log_probs, state, _ = self.decode_step(tgt_in[:, t], state)
            steps.append(log_probs)
        return torch.stack(steps, 1)


# ---------------------------------------------------------------------------------------
# RNN encoder and the fixed-context encoder-decoder


def rnn_class(cell: str):
    return nn.LSTM if cell == "lstm" else nn.GRU


class RNNEncoder(nn.Module):
    """Embeddings and a (bi)directional LSTM/GRU over packed sequences, so that padding
    never reaches the recurrence. A bidirectional encoder uses hidden/2 per direction and
    its final states are joined per layer, so they fit the decoder without reshaping."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.src_vocab, cfg.emb_dim, padding_idx=PAD)
        dirs = 2 if cfg.bidirectional else 1
        self.rnn = rnn_class(cfg.cell)(cfg.emb_dim, cfg.hidden // dirs, cfg.layers, batch_first=True,
                                       dropout=cfg.dropout if cfg.layers > 1 else 0.0, bidirectional=cfg.bidirectional)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, src, src_lengths):
        packed = pack_padded_sequence(self.drop(self.embed(src)), src_lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, final = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        finals = final if isinstance(final, tuple) else (final,)
        return out, tuple(self.join_directions(h) for h in finals)

    def join_directions(self, h):
        """(layers * dirs, B, H/dirs) -> (B, layers, H), batch first for the decoder state."""
        if self.cfg.bidirectional:
            h = h.view(self.cfg.layers, 2, h.size(1), h.size(2))
            h = torch.cat([h[:, 0], h[:, 1]], dim=-1)
        return h.transpose(0, 1).contiguous()


def rnn_state(finals) -> State:
    state = {"h": finals[0]}
    if len(finals) == 2:
        state["c"] = finals[1]
    return state


def run_rnn(rnn: nn.Module, inputs, state: State):
    """One or more steps of the decoder RNN from a batch-first state; returns outputs and
    the new state (batch first)."""
    h = state["h"].transpose(0, 1).contiguous()
    hidden = (h, state["c"].transpose(0, 1).contiguous()) if "c" in state else h
    out, hidden = rnn(inputs, hidden)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    new = {"h": hidden[0].transpose(0, 1)}
    if len(hidden) == 2:
        new["c"] = hidden[1].transpose(0, 1)
    return out, new


class RNNSeq2Seq(Seq2Seq):
    """Encoder-decoder whose only link is the encoder's final state (Sutskever et al., 2014);
    with ``context_feed`` the top layer's final state is also fed to every decoder step and
    to the output layer (Cho et al., 2014)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = RNNEncoder(cfg)
        self.embed = nn.Embedding(cfg.tgt_vocab, cfg.emb_dim, padding_idx=PAD)
        extra = cfg.hidden if cfg.context_feed else 0
        self.rnn = rnn_class(cfg.cell)(cfg.emb_dim + extra, cfg.hidden, cfg.layers, batch_first=True,
                                       dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden + extra, cfg.tgt_vocab)

    def encode(self, src, src_lengths) -> State:
        _, finals = self.encoder(src, src_lengths)
        state = rnn_state(finals)
        if self.cfg.context_feed:
            state["context"] = finals[0][:, -1]
        return state

    def steps(self, tgt_in, state: State):
        emb = self.drop(self.embed(tgt_in))
        if self.cfg.context_feed:
            ctx = state["context"].unsqueeze(1).expand(-1, emb.size(1), -1)
            emb = torch.cat([emb, ctx], -1)
        out, new = run_rnn(self.rnn, emb, state)
        if self.cfg.context_feed:
            out = torch.cat([out, ctx], -1)
            new["context"] = state["context"]
        return F.log_softmax(self.out(self.drop(out)), -1), new

    def forward_teacher(self, src, src_lengths, tgt_in):
        return self.steps(tgt_in, self.encode(src, src_lengths))[0]

    def decode_step(self, prev_ids, state: State):
        log_probs, state = self.steps(prev_ids.unsqueeze(1), state)
        return log_probs[:, 0], state, None


# ---------------------------------------------------------------------------------------
# Attention: Bahdanau (additive) and Luong (dot, general, concat)


class Attention(nn.Module):
    """Scores between a decoder query and the encoder outputs ("memory").

    ``keys(memory)`` is the part that depends only on the source; it is computed once per
    sentence in ``encode`` and kept in the decoder state."""

    def __init__(self, score: str, query_dim: int, memory_dim: int, attention_dim: int):
        super().__init__()
        self.score = score
        if score == "additive":
            self.key_proj = nn.Linear(memory_dim, attention_dim, bias=False)
            self.query_proj = nn.Linear(query_dim, attention_dim)
            self.v = nn.Linear(attention_dim, 1, bias=False)
        elif score == "general":
            self.key_proj = nn.Linear(memory_dim, query_dim, bias=False)

    def keys(self, memory):
        return memory if self.score == "dot" else self.key_proj(memory)

    def forward(self, query, keys, memory, mask):
        """query (B, Q), keys (B, S, K), memory (B, S, M), mask (B, S) ->
        context (B, M), weights (B, S)."""
        if self.score == "additive":
            scores = self.v(torch.tanh(keys + self.query_proj(query).unsqueeze(1))).squeeze(-1)
        else:
            scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        weights = masked_softmax(scores, mask)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class AttentionSeq2Seq(Seq2Seq):
    """RNN decoder attending over the encoder outputs.

    bahdanau: attention from the previous top hidden state, context fed into the RNN step,
    output from [state; context; embedding] (Bahdanau et al., 2015).
    dot/general/concat: RNN step first, then attention from the new top state, and the
    attentional vector tanh(W [context; state]) predicts the word; with ``input_feed`` it
    is also fed to the next step (Luong et al., 2015)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.luong = cfg.attention != "bahdanau"
        score = {"bahdanau": "additive", "concat": "additive"}.get(cfg.attention, cfg.attention)
        self.encoder = RNNEncoder(cfg)
        self.embed = nn.Embedding(cfg.tgt_vocab, cfg.emb_dim, padding_idx=PAD)
        self.attn = Attention(score, cfg.hidden, cfg.hidden, cfg.attention_dim)
        feed = cfg.hidden if (not self.luong or cfg.input_feed) else 0
        self.rnn = rnn_class(cfg.cell)(cfg.emb_dim + feed, cfg.hidden, cfg.layers, batch_first=True,
                                       dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        if self.luong:
            self.combine = nn.Linear(2 * cfg.hidden, cfg.hidden, bias=False)
            self.out = nn.Linear(cfg.hidden, cfg.tgt_vocab)
        else:
            self.out = nn.Linear(2 * cfg.hidden + cfg.emb_dim, cfg.tgt_vocab)
        if cfg.copy:  # p_gen from [context; decoder state; input embedding]
            self.copy_gate = nn.Linear(2 * cfg.hidden + cfg.emb_dim, 1)

    def encode(self, src, src_lengths) -> State:
        memory, finals = self.encoder(src, src_lengths)
        state = rnn_state(finals)
        state["memory"] = memory
        state["keys"] = self.attn.keys(memory)
        state["src_mask"] = src != PAD
        if self.cfg.copy:
            state["src_ids"] = src
        if self.luong and self.cfg.input_feed:
            state["feed"] = memory.new_zeros(memory.size(0), self.cfg.hidden)
        return state

    def decode_step(self, prev_ids, state: State):
        emb = self.drop(self.embed(prev_ids))
        fixed = {k: state[k] for k in ("memory", "keys", "src_mask", "src_ids") if k in state}
        if self.luong:
            rnn_in = torch.cat([emb, state["feed"]], -1) if self.cfg.input_feed else emb
            out, new = run_rnn(self.rnn, rnn_in.unsqueeze(1), state)
            top = out[:, 0]
            context, weights = self.attn(top, state["keys"], state["memory"], state["src_mask"])
            attentional = torch.tanh(self.combine(torch.cat([context, top], -1)))
            if self.cfg.input_feed:
                new["feed"] = attentional
            logits = self.out(self.drop(attentional))
        else:
            context, weights = self.attn(state["h"][:, -1], state["keys"], state["memory"], state["src_mask"])
            out, new = run_rnn(self.rnn, torch.cat([emb, context], -1).unsqueeze(1), state)
            top = out[:, 0]
            logits = self.out(self.drop(torch.cat([top, context, emb], -1)))
        new.update(fixed)
        log_probs = F.log_softmax(logits, -1)
        if self.cfg.copy:
            log_probs = copy_mixture(log_probs, self.copy_gate(torch.cat([context, top, emb], -1)), weights,
                                     state["src_ids"])
        return log_probs, new, weights


# The smallest copy probability a log is taken of: keeps the log (and its gradient) finite for
# tokens absent from the source; far below any probability that could win a step.
COPY_FLOOR = 1e-30


def copy_mixture(log_probs, gate, weights, src_ids):
    """The pointer-generator's distribution (See et al., 2017), in log space:
    log(p_gen * P_vocab + (1 - p_gen) * P_copy), p_gen = sigmoid(gate), P_copy the attention
    weights summed per source token id. log_probs (B, V), gate (B, 1), weights and src_ids (B, S)."""
    # In float32 whatever autocast made of the inputs: a bfloat16 log-probability keeps about
    # three digits, too few for the loss.
    log_probs, gate, weights = log_probs.float(), gate.float(), weights.float()
    copied = torch.zeros_like(log_probs).scatter_add_(1, src_ids, weights)
    return torch.logaddexp(F.logsigmoid(gate) + log_probs,
                           F.logsigmoid(-gate) + torch.log(copied.clamp_min(COPY_FLOOR)))


# ---------------------------------------------------------------------------------------
# Transformer


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


def scaled_dot_product_attention(q, k, v, mask):
    """q (B, h, Tq, d), k/v (B, h, Tk, d), mask broadcastable to (B, h, Tq, Tk), True = keep."""
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    weights = masked_softmax(scores, mask)
    return torch.matmul(weights, v), weights


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.d_head = heads, d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def split(self, x):
        return x.view(x.size(0), x.size(1), self.heads, self.d_head).transpose(1, 2)

    def project_kv(self, x):
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))

    def forward(self, query, k, v, mask):
        """query (B, Tq, D); k, v already projected (B, h, Tk, d_head)."""
        out, weights = scaled_dot_product_attention(self.split(self.q_proj(query)), k, v, mask)
        out = out.transpose(1, 2).reshape(query.size(0), query.size(1), -1)
        return self.drop(self.out_proj(out)), weights


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, ff_dim: int, dropout: float, activation: str = "relu"):
        super().__init__(nn.Linear(d_model, ff_dim), ACTIVATIONS[activation](), nn.Dropout(dropout),
                         nn.Linear(ff_dim, d_model), nn.Dropout(dropout))


class Sublayer(nn.Module):
    """Residual around a sublayer with pre- or post-layer normalization."""

    def __init__(self, d_model: int, pre_norm: bool):
        super().__init__()
        self.norm, self.pre = nn.LayerNorm(d_model), pre_norm

    def forward(self, x, fn):
        if self.pre:
            out = fn(self.norm(x))
            return x + out[0] if isinstance(out, tuple) else x + out
        out = fn(x)
        return self.norm(x + (out[0] if isinstance(out, tuple) else out))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout, cfg.activation)
        self.sub1, self.sub2 = Sublayer(cfg.d_model, pre), Sublayer(cfg.d_model, pre)

    def forward(self, x, mask):
        x = self.sub1(x, lambda y: self.attn(y, *self.attn.project_kv(y), mask))
        return self.sub2(x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout, cfg.activation)
        self.subs = nn.ModuleList(Sublayer(cfg.d_model, pre) for _ in range(3))

    def forward(self, x, self_kv, self_mask, cross_kv, cross_mask):
        """self_kv: function from the normed input to its (k, v), which may include a cache."""
        weights = {}

        def cross(y):
            out, weights["cross"] = self.cross_attn(y, *cross_kv, cross_mask)
            return out

        x = self.subs[0](x, lambda y: self.self_attn(y, *self_kv(y), self_mask))
        x = self.subs[1](x, cross)
        return self.subs[2](x, self.ff), weights["cross"]


class Transformer(Seq2Seq):
    """Encoder-decoder Transformer with incremental decoding: the state holds each decoder
    layer's self-attention keys/values so far ("k{i}", "v{i}") and its cross-attention
    keys/values over the source ("ck{i}", "cv{i}"), computed once in ``encode``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.src_embed = nn.Embedding(cfg.src_vocab, d, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab, d, padding_idx=PAD)
        # Embeddings are scaled by sqrt(d) on input; drawing them with std d^-0.5 keeps the
        # scaled input at unit variance and, when the output layer shares the target table,
        # the initial logits near unit scale. nn.Embedding's N(0, 1) gives logits of std
        # sqrt(d) there and a first loss in the hundreds, which the run then never recovers from.
        for table in (self.src_embed, self.tgt_embed):
            nn.init.normal_(table.weight, std=d ** -0.5)
            with torch.no_grad():
                table.weight[PAD].zero_()
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.max_positions, d)
        else:
            self.register_buffer("pos_table", sinusoidal_positions(cfg.max_positions, d), persistent=False)
        self.enc = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.dec = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        pre = cfg.norm == "pre"
        self.enc_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.dec_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.out = nn.Linear(d, cfg.tgt_vocab)
        if cfg.tie_embeddings:
            self.out.weight = self.tgt_embed.weight
        if cfg.copy:  # p_gen from the decoder's output, the vector the output layer reads
            self.copy_gate = nn.Linear(d, 1)
        self.drop = nn.Dropout(cfg.dropout)

    def embed(self, table: nn.Embedding, ids, start: int = 0):
        n = ids.size(1)
        if start + n > self.cfg.max_positions:
            raise ValueError(f"sequence of {start + n} tokens exceeds ModelConfig.max_positions={self.cfg.max_positions}")
        pos = self.pos.weight[start:start + n] if self.cfg.positions == "learned" else self.pos_table[start:start + n]
        scale = math.sqrt(self.cfg.d_model) if self.cfg.scale_embeddings else 1.0
        return self.drop(table(ids) * scale + pos)

    def encode(self, src, src_lengths) -> State:
        mask = (src != PAD)[:, None, None, :]
        x = self.embed(self.src_embed, src)
        for layer in self.enc:
            x = layer(x, mask)
        memory = self.enc_norm(x)
        state = {"src_mask": src != PAD}
        if self.cfg.copy:
            state["src_ids"] = src
        empty = memory.new_zeros(src.size(0), self.cfg.heads, 0, self.cfg.d_model // self.cfg.heads)
        for i, layer in enumerate(self.dec):
            state[f"ck{i}"], state[f"cv{i}"] = layer.cross_attn.project_kv(memory)
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        return state

    def decode(self, tgt_in, state: State, start: int, cache: bool):
        """Run the decoder over tgt_in (B, T) at positions start..start+T-1."""
        x = self.embed(self.tgt_embed, tgt_in, start)
        t = tgt_in.size(1)
        causal = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
        self_mask = causal[None, None] & torch.cat(
            [torch.ones(tgt_in.size(0), start, dtype=torch.bool, device=x.device), tgt_in != PAD], 1)[:, None, None, :]
        cross_mask = state["src_mask"][:, None, None, :]
        new = dict(state)
        for i, layer in enumerate(self.dec):
            def self_kv(y, i=i, layer=layer):
                k, v = layer.self_attn.project_kv(y)
                k, v = torch.cat([state[f"k{i}"], k], 2), torch.cat([state[f"v{i}"], v], 2)
                if cache:
                    new[f"k{i}"], new[f"v{i}"] = k, v
                return k, v
            x, weights = layer(x, self_kv, self_mask, (state[f"ck{i}"], state[f"cv{i}"]), cross_mask)
        h = self.dec_norm(x)
        log_probs = F.log_softmax(self.out(h), -1)
        if self.cfg.copy:
            # The copy distribution is the last layer's cross-attention, its heads averaged.
            b, t, s = weights.size(0), weights.size(2), weights.size(3)
            src_ids = state["src_ids"][:, None, :].expand(b, t, s).reshape(b * t, s)
            log_probs = copy_mixture(log_probs.reshape(b * t, -1), self.copy_gate(h).reshape(b * t, 1),
                                     weights.mean(1).reshape(b * t, s), src_ids).view(b, t, -1)
        return log_probs, new, weights

    def forward_teacher(self, src, src_lengths, tgt_in):
        return self.decode(tgt_in, self.encode(src, src_lengths), 0, cache=False)[0]

    def decode_step(self, prev_ids, state: State):
        log_probs, state, weights = self.decode(prev_ids.unsqueeze(1), state, state["k0"].size(2), cache=True)
        return log_probs[:, 0], state, weights[:, :, 0]


def build_model(cfg: ModelConfig) -> Seq2Seq:
    validate_model_config(cfg)
    return {"rnn": RNNSeq2Seq, "attention": AttentionSeq2Seq, "transformer": Transformer}[cfg.family](cfg)
