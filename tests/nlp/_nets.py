"""Sequence models written by hand with the operators GluonNLP's models use, for the tests
that must run without GluonNLP (it is not in the ``test`` extra: it builds from source).

* :class:`MiniBert`: BERT's graph in small: word, token-type and position embeddings,
  LayerNorm, self-attention through ``interleaved_matmul_selfatt_qk``/``_valatt`` with a
  ``valid_length`` softmax mask, dense + GELU feed-forward, residual sums, a tanh pooler.
  Called like GluonNLP's ``BERTModel``: ``net(tokens, token_types, valid_length)`` returns
  ``(sequence output, pooled output)``.
* :class:`RowLSTM` and :class:`RowTransformer` read an image row by row (a 28-step sequence
  of 28 features) and classify it; the transformer's attention is ``batch_dot`` + softmax.
* :class:`LSTMClassifier` and :class:`LSTMLanguageModel`: token models around an LSTM.
"""
import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn, rnn


class SelfAttention(HybridBlock):
    """Multi-head self-attention over (length, batch, units) data, as GluonNLP computes it:
    one projection to interleaved query/key/value heads, then the interleaved matmuls."""

    def __init__(self, units, heads, **kwargs):
        super().__init__(**kwargs)
        self._heads = heads
        with self.name_scope():
            self.qkv = nn.Dense(3 * units, flatten=False, in_units=units, prefix="qkv_")
            self.proj = nn.Dense(units, flatten=False, in_units=units, prefix="proj_")

    def hybrid_forward(self, F, x, valid_length=None):
        qkv = self.qkv(x)
        scores = F.contrib.interleaved_matmul_selfatt_qk(qkv, heads=self._heads)
        if valid_length is None:
            weights = F.softmax(scores, axis=-1)
        else:   # one length per (sample, head, query): (batch * heads, length) int32
            length = F.broadcast_axis(F.expand_dims(valid_length, axis=1), axis=1,
                                      size=self._heads).reshape((-3, 0))
            weights = F.softmax(scores, length=length, use_length=True, axis=-1)
        context = F.contrib.interleaved_matmul_selfatt_valatt(qkv, weights, heads=self._heads)
        return self.proj(context)


class EncoderLayer(HybridBlock):
    """Attention, residual sum, LayerNorm; dense + GELU, dense, residual sum, LayerNorm."""

    def __init__(self, units, hidden, heads, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.attention = SelfAttention(units, heads, prefix="att_")
            self.norm1 = nn.LayerNorm(in_channels=units, prefix="ln1_")
            self.ffn1 = nn.Dense(hidden, flatten=False, in_units=units, prefix="ffn1_")
            self.gelu = nn.GELU(prefix="gelu_")
            self.ffn2 = nn.Dense(units, flatten=False, in_units=hidden, prefix="ffn2_")
            self.norm2 = nn.LayerNorm(in_channels=units, prefix="ln2_")

    def hybrid_forward(self, F, x, valid_length=None):
        x = self.norm1(x + self.attention(x, valid_length))
        return self.norm2(x + self.ffn2(self.gelu(self.ffn1(x))))


class MiniBert(HybridBlock):
    """A small BERT (see the module docstring); ``hybrid_forward(inputs, token_types,
    valid_length=None)`` as GluonNLP's ``BERTModel``."""

    def __init__(self, vocab=200, units=64, hidden=256, heads=2, layers=2, max_length=64,
                 **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.word_embed = nn.Embedding(vocab, units, prefix="word_")
            self.type_embed = nn.Embedding(2, units, prefix="type_")
            self.position_embed = nn.Embedding(max_length, units, prefix="position_")
            self.norm = nn.LayerNorm(in_channels=units, prefix="ln_")
            self.layers = nn.HybridSequential(prefix="layers_")
            for _ in range(layers):
                self.layers.add(EncoderLayer(units, hidden, heads))
            self.pooler = nn.Dense(units, activation="tanh", in_units=units, prefix="pooler_")

    def hybrid_forward(self, F, inputs, token_types, valid_length=None):
        x = self.word_embed(inputs) + self.type_embed(token_types)
        positions = F.contrib.arange_like(inputs, axis=1)
        x = self.norm(F.broadcast_add(x, F.expand_dims(self.position_embed(positions), 0)))
        x = F.transpose(x, axes=(1, 0, 2))                       # (length, batch, units)
        if valid_length is not None:    # (batch, length) int32, as GluonNLP's encoder
            valid_length = F.cast(F.broadcast_add(valid_length.reshape((-1, 1)),
                                                  F.zeros_like(positions).reshape((1, -1))),
                                  dtype="int32")
        for layer in self.layers:
            x = layer(x, valid_length)
        sequence = F.transpose(x, axes=(1, 0, 2))
        pooled = self.pooler(F.slice_axis(sequence, axis=1, begin=0, end=1).reshape((0, -1)))
        return sequence, pooled


def bert_batches(vocab, count=4, batch=8, length=24, seed=0):
    """GluonNLP-style ``(tokens, token_types, valid_length, label)`` tuples of NDArrays."""
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        valid = rs.randint(length // 2, length + 1, size=batch)
        tokens = rs.randint(4, vocab, size=(batch, length))
        tokens[np.arange(length)[None, :] >= valid[:, None]] = 1      # padding
        types = (np.arange(length)[None, :] >= (valid // 2)[:, None]).astype("float32")
        out.append(tuple(mx.nd.array(a) for a in (tokens, types, valid,
                                                 rs.randint(0, 2, size=batch))))
    return out


class RowLSTM(HybridBlock):
    """An image read row by row: LSTM over the rows, last state -> dense -> classes."""

    def __init__(self, hidden=64, classes=10, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embed = nn.Dense(hidden, flatten=False, activation="relu", prefix="rows_")
            self.lstm = rnn.LSTM(hidden, layout="NTC", input_size=hidden)
            self.head = nn.Dense(classes, prefix="head_")

    def hybrid_forward(self, F, x):
        x = self.lstm(self.embed(x.reshape((0, -1, 28))))
        return self.head(F.concat(F.mean(x, axis=1), F.max(x, axis=1), dim=1))


class RowTransformer(HybridBlock):
    """An image read row by row: dense row embedding + positions, one self-attention layer
    (``batch_dot`` and softmax, written out), LayerNorm, feed-forward, mean pool, dense."""

    def __init__(self, units=64, hidden=128, classes=10, **kwargs):
        super().__init__(**kwargs)
        self._scale = 1.0 / np.sqrt(units)
        with self.name_scope():
            self.embed = nn.Dense(units, flatten=False, prefix="rows_")
            self.position = nn.Embedding(28, units, prefix="position_")
            self.query = nn.Dense(units, flatten=False, prefix="query_")
            self.key = nn.Dense(units, flatten=False, prefix="key_")
            self.value = nn.Dense(units, flatten=False, prefix="value_")
            self.proj = nn.Dense(units, flatten=False, prefix="proj_")
            self.norm1 = nn.LayerNorm(prefix="ln1_")
            self.ffn1 = nn.Dense(hidden, flatten=False, activation="relu", prefix="ffn1_")
            self.ffn2 = nn.Dense(units, flatten=False, prefix="ffn2_")
            self.norm2 = nn.LayerNorm(prefix="ln2_")
            self.head = nn.Dense(classes, prefix="head_")

    def hybrid_forward(self, F, x):
        x = x.reshape((0, -1, 28))
        positions = F.contrib.arange_like(x, axis=1)
        x = F.broadcast_add(self.embed(x), F.expand_dims(self.position(positions), 0))
        scores = F.batch_dot(self.query(x), self.key(x), transpose_b=True) * self._scale
        attended = F.batch_dot(F.softmax(scores, axis=-1), self.value(x))
        x = self.norm1(x + self.proj(attended))
        x = self.norm2(x + self.ffn2(self.ffn1(x)))
        return self.head(F.mean(x, axis=1))


class LSTMClassifier(HybridBlock):
    """Tokens -> embedding -> LSTM (NTC) -> mean over time -> dense -> dense."""

    def __init__(self, vocab=2000, embed=128, hidden=128, classes=4, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embed = nn.Embedding(vocab, embed)
            self.lstm = rnn.LSTM(hidden, layout="NTC", input_size=embed)
            self.hidden = nn.Dense(hidden, activation="relu", in_units=hidden)
            self.out = nn.Dense(classes, in_units=hidden)

    def hybrid_forward(self, F, x):
        return self.out(self.hidden(F.mean(self.lstm(self.embed(x)), axis=1)))


class LSTMLanguageModel(HybridBlock):
    """Tokens (TN) -> embedding -> 2-layer LSTM -> dropout -> decoder over the vocabulary."""

    def __init__(self, vocab=2000, hidden=128, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embed = nn.Embedding(vocab, hidden)
            self.lstm = rnn.LSTM(hidden, num_layers=2, layout="TNC", input_size=hidden)
            self.drop = nn.Dropout(0.2)
            self.decoder = nn.Dense(vocab, flatten=False, in_units=hidden)

    def hybrid_forward(self, F, x):
        return self.decoder(self.drop(self.lstm(self.embed(x))))


def cosine(a, b):
    """Cosine similarity of two arrays (NDArray or numpy), flattened, in float64."""
    a = (a.asnumpy() if hasattr(a, "asnumpy") else np.asarray(a)).ravel().astype("float64")
    b = (b.asnumpy() if hasattr(b, "asnumpy") else np.asarray(b)).ravel().astype("float64")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
