"""Agreement metrics shared by the doctor's tools: SQNR, cosine and their accumulator."""
import math

import numpy as np

__all__ = ["EXACT_DB", "sqnr_db", "cosine", "Accumulator", "OutputsAccumulator", "all_outputs"]

#: SQNR reported for a layer whose int8 output equals fp32 exactly (no noise at all).
EXACT_DB = 200.0


def sqnr_db(signal_power, noise_power):
    """``10 log10(signal / noise)`` in dB; :data:`EXACT_DB` when there is no noise."""
    if noise_power <= 0.0:
        return EXACT_DB
    if signal_power <= 0.0:
        return -EXACT_DB
    return min(EXACT_DB, 10.0 * math.log10(signal_power / noise_power))


def cosine(a, b):
    """Cosine similarity of two arrays, flattened (1.0 when both are all zero)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(a @ b) / (na * nb)


class Accumulator:
    """Running SQNR and cosine of int8 outputs against fp32 references, over batches."""

    __slots__ = ("signal", "noise", "dot", "qq")

    def __init__(self):
        self.signal = self.noise = self.dot = self.qq = 0.0

    def add(self, ref, out):
        ref = ref.astype(np.float64).ravel()
        out = out.astype(np.float64).ravel()
        self.signal += float(ref @ ref)
        self.noise += float(((ref - out) ** 2).sum())
        self.dot += float(ref @ out)
        self.qq += float(out @ out)

    @property
    def sqnr(self):
        return sqnr_db(self.signal, self.noise)

    @property
    def cosine(self):
        if self.signal == 0.0 or self.qq == 0.0:
            return 1.0 if self.signal == self.qq else 0.0
        return self.dot / math.sqrt(self.signal * self.qq)


class OutputsAccumulator:
    """One :class:`Accumulator` per network output; the agreement is the worst output's
    (a detector's class ids agree exactly while its scores and boxes may not)."""

    __slots__ = ("parts",)

    def __init__(self):
        self.parts = []

    def add(self, refs, outs):
        """``refs``, ``outs``: every output of one batch (numpy arrays), in order."""
        while len(self.parts) < len(refs):
            self.parts.append(Accumulator())
        for part, ref, out in zip(self.parts, refs, outs):
            part.add(ref, out)

    @property
    def sqnr(self):
        return min(p.sqnr for p in self.parts)

    @property
    def cosine(self):
        return min(p.cosine for p in self.parts)


def all_outputs(out):
    """Every tensor of a network's output, nested tuples and lists flattened, in order."""
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in all_outputs(item)]
    return [out]
