"""Typed settings: the enums that name dtypes, backends and granularities.

Strings given by users are parsed here once, with errors that list the valid names;
the rest of the package only sees the enums.
"""
import enum
import difflib

from .errors import UnknownNameError

__all__ = ["QuantDtype", "Backend", "Granularity", "suggest"]


def suggest(name, candidates, n=3):
    """Return a short ``" Did you mean ...?"`` hint for ``name`` among ``candidates``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)
    return (" Did you mean %s?" % " or ".join(repr(c) for c in close)) if close else ""


class _ParsableEnum(enum.Enum):
    """An enum parsed from its value or an alias, with a helpful error."""

    @classmethod
    def _aliases(cls):
        return {}

    @classmethod
    def parse(cls, value, what=None):
        """Return the member named by ``value`` (a member, its value or an alias)."""
        if isinstance(value, cls):
            return value
        what = what or cls.__name__
        if isinstance(value, str):
            key = value.strip().lower()
            for member in cls:
                if member.value == key:
                    return member
            alias = cls._aliases().get(key)
            if alias is not None:
                return cls(alias)
        valid = sorted([m.value for m in cls] + list(cls._aliases()))
        raise UnknownNameError(
            "Unknown %s %r. Valid values: %s.%s"
            % (what, value, ", ".join(repr(v) for v in valid), suggest(value, valid)))


class QuantDtype(_ParsableEnum):
    """The integer type of quantized activations.

    ``AUTO`` picks uint8 for tensors that are never negative (after ReLU) and int8
    otherwise; ``INT8`` makes every quantize node emit int8 (oneDNN fused operators
    that end in a ReLU still emit uint8, which is strictly more precise for their
    non-negative outputs); ``UINT8`` is refused for tensors that can be negative.
    """

    AUTO = "auto"
    INT8 = "int8"
    UINT8 = "uint8"


class Backend(_ParsableEnum):
    """The runtime the int8 graph is built for."""

    ONEDNN = "onednn"
    CUDNN = "cudnn"

    @classmethod
    def _aliases(cls):
        return {"mkldnn": "onednn", "dnnl": "onednn", "cpu": "onednn",
                "cuda": "cudnn", "gpu": "cudnn"}


class Granularity(_ParsableEnum):
    """How weights are scaled: one scale per tensor or one per output channel."""

    TENSOR = "tensor"
    CHANNEL = "channel"

    @classmethod
    def _aliases(cls):
        return {"tensor-wise": "tensor", "per-tensor": "tensor",
                "channel-wise": "channel", "per-channel": "channel"}

    @property
    def mxnet_name(self):
        """The spelling MXNet's quantization pass expects."""
        return self.value + "-wise"
