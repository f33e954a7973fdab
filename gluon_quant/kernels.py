"""Which instructions the CPU backend's int8 kernels run on, and why not AMX.

On CPUs with AMX (Intel Xeon 4th generation, Sapphire Rapids, and later), the oneDNN
inside MXNet 1.9.1 (v2.4.4) has int8 convolution kernels on the tile registers, off
unless ``DNNL_MAX_CPU_ISA=AVX512_CORE_AMX`` is set before its first primitive. Measured on
a 2-core Xeon (family 6, model 207): resnet50_v1 at batch 16 ran its int8 graph in 48-54 ms
with them against 97-100 ms with AVX512-VNNI, with bit-identical outputs on 14 nets. But
the same kernels **crash or compute wrong numbers on other shapes**: a 1x1 convolution with
signed int8 input at 6x6 pixels, batch 8, dies with a segmentation fault; a ResNet
bottleneck going from 12x12 to 6x6 at batch 8 gives 0.966 cosine to the VNNI result and
corrupts the heap (``malloc_consolidate(): invalid chunk size``), as does SSD-ResNet50 at
192 px. gluon_quant therefore leaves oneDNN's default (AVX512-VNNI) alone.

A user who sets ``DNNL_MAX_CPU_ISA`` to an AMX ISA anyway is warned once at import, and the
process is granted the tile state Linux requires first (``arch_prctl``; without it the first
AMX instruction kills the process with SIGILL): the choice is theirs, not a crash on the
first layer. Where Linux refuses, oneDNN is held to its default ISA instead.
"""
import logging
import os

from . import _mxnet

__all__ = ["check_isa", "describe", "int16_pair_sums", "pairs_saturate"]

_log = logging.getLogger(__name__)

#: What :func:`check_isa` found, for :func:`describe`.
_STATE = {"amx": False, "why": "not checked"}


def check_isa():
    """Look at the user's ``DNNL_MAX_CPU_ISA`` once, at import (see the module docstring).

    Returns
    -------
    bool
        Whether oneDNN may use AMX in this process (the user asked and Linux granted it).
    """
    user = next((os.environ[v] for v in _mxnet.isa.ISA_VARIABLES if os.environ.get(v)), None)
    has_amx = {"amx_int8", "amx_tile"} <= _mxnet.isa.cpu_flags()
    if user is None:
        _STATE.update(amx=False, why=(
            "oneDNN 2.4.4's AMX int8 kernels crash on some shapes; not turned on"
            if has_amx else "the CPU has no AMX int8"))
    elif "AMX" not in user.upper():
        _STATE.update(amx=False, why="DNNL_MAX_CPU_ISA=%s, set by the user" % user)
    elif _mxnet.isa.request_amx_permission():
        _STATE.update(amx=True, why="DNNL_MAX_CPU_ISA=%s, set by the user" % user)
        _log.warning(
            "DNNL_MAX_CPU_ISA=%s: oneDNN 2.4.4 (MXNet 1.9.1) runs int8 convolutions on AMX, "
            "about 2x faster than VNNI on resnet50_v1, but its AMX kernels were measured to "
            "crash (segmentation fault) or return wrong values on some layer shapes (a 1x1 "
            "convolution at 6x6 pixels, batch 8). Compare the int8 outputs with an unset "
            "DNNL_MAX_CPU_ISA before relying on them (docs/faq.md).", user)
    else:
        # oneDNN would run AMX instructions that Linux then kills the process for
        _log.warning("DNNL_MAX_CPU_ISA=%s asks oneDNN for AMX, but this CPU or Linux does not "
                     "grant the AMX tile state: oneDNN runs with its default ISA instead (the "
                     "process would otherwise be killed by SIGILL).", user)
        _mxnet.isa.latch_isa("ALL")
        _STATE.update(amx=False, why="DNNL_MAX_CPU_ISA=%s, set by the user, not granted" % user)
    if _log.isEnabledFor(logging.DEBUG):    # describe() runs a probe convolution
        _log.debug("oneDNN int8 kernels: %s", describe())
    return _STATE["amx"]


def int16_pair_sums():
    """Whether oneDNN's int8 kernels in this process sum pairs of uint8 x int8 products
    into saturating int16 (CPUs without VNNI: AVX2, AVX-512 before Cascade Lake, AMD Zen
    1-3; or oneDNN capped below VNNI). Measured once by a probe convolution
    (:func:`gluon_quant._mxnet.isa.int8_pairs_saturate`); where True, uint8 activations
    read by such layers are quantized to 7-bit codes (:mod:`gluon_quant.graph.saturation`).
    """
    return _mxnet.isa.int8_pairs_saturate()


def pairs_saturate(spec):
    """Whether the layers ``spec`` declares pair-summing (``BackendSpec.pair_sum_ops``)
    saturate in this process: :func:`int16_pair_sums`, for a backend that has such."""
    return bool(spec.pair_sum_ops) and int16_pair_sums()


def describe():
    """One line saying which int8 kernels oneDNN runs: AMX or not and why, VNNI or not."""
    return "AMX int8 tiles %s (%s); %s" % (
        "on" if _STATE["amx"] else "off", _STATE["why"],
        "int8 pairs summed in saturating int16 (no VNNI): uint8 activations of "
        "convolutions and dense layers quantized to 7 bits" if int16_pair_sums()
        else "int8 sums in int32 (VNNI or wider)")
