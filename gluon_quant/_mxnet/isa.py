"""oneDNN's instruction set: how the oneDNN inside MXNet 1.9.1 is let use AMX.

oneDNN v2.4.4, bundled with MXNet 1.9.1, has AMX int8 kernels (Intel Xeon 4th generation,
Sapphire Rapids, and later) but uses them only when ``DNNL_MAX_CPU_ISA`` names AMX when
it creates its first primitive (it reads the variable once). Linux (5.16 and later) also
requires a process to ask for the tile registers' state with ``arch_prctl
(ARCH_REQ_XCOMP_PERM)`` before using them: without it, the first AMX instruction kills
the process with SIGILL. The permission is kept across ``fork`` but not ``exec``, so the
variable must not be left in the environment that child processes inherit.

These functions only do what they are told; what to do about AMX is decided by
:mod:`gluon_quant.kernels`.
"""
import ctypes
import functools
import os
import platform

import mxnet as mx

__all__ = ["ISA_VARIABLES", "cpu_flags", "request_amx_permission", "latch_isa",
           "int8_pairs_saturate"]

#: The variables oneDNN reads for its maximum ISA (the second is its former name).
ISA_VARIABLES = ("DNNL_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA")

_SYS_ARCH_PRCTL = 158           # x86_64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def cpu_flags():
    """The CPU's feature flags as Linux lists them (``/proc/cpuinfo``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def request_amx_permission():
    """Ask Linux for the AMX tile state for this process: True when granted."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def latch_isa(isa):
    """Make oneDNN read ``DNNL_MAX_CPU_ISA=isa`` now, then restore the environment.

    oneDNN fixes its ISA when it creates its first primitive: one tiny convolution is run
    with the variable set. Where MXNet has already run a oneDNN primitive in this
    process, the ISA it fixed then stays (nothing fails). The variable is removed again
    so that child processes (which do not inherit the AMX permission through ``exec``)
    do not read it.
    """
    before = os.environ.get(ISA_VARIABLES[0])
    os.environ[ISA_VARIABLES[0]] = isa
    try:
        data = mx.nd.ones((1, 16, 4, 4))
        weight = mx.nd.ones((16, 16, 1, 1))
        mx.nd.Convolution(data, weight, kernel=(1, 1), num_filter=16,
                          no_bias=True).wait_to_read()
    finally:
        if before is None:
            del os.environ[ISA_VARIABLES[0]]
        else:
            os.environ[ISA_VARIABLES[0]] = before


#: The probe's convolution: 16 uint8 channels at 255 times int8 weights at 127, 1x1, 16
#: filters. Keep the filters a multiple of 16: MXNet's standalone ``quantized_conv`` with
#: 8, 24 or 40 filters runs oneDNN's AVX2 kernel even on an AVX-512 VNNI CPU (measured:
#: saturated pairs there), while the fused convolutions of an int8 graph pad their
#: weights and keep the VNNI kernel for any number of filters (tests/graph/
#: test_saturation.py checks both).
_PROBE_CHANNELS = 16


@functools.lru_cache(maxsize=1)
def int8_pairs_saturate():
    """Whether oneDNN's int8 convolution in this process sums pairs of uint8 x int8
    products into saturating int16 (``vpmaddubsw``: x86 without VNNI, or oneDNN capped
    below it), measured once: a 1x1 convolution of 16 channels at the largest codes
    gives 16 * 255 * 127 = 518160 with int32 sums and 8 * 32767 with saturating pairs.
    False where the probe fails (an MXNet without oneDNN's int8 kernels).
    """
    data = mx.nd.full((1, _PROBE_CHANNELS, 1, 1), 255, dtype="uint8")
    weight = mx.nd.full((_PROBE_CHANNELS, _PROBE_CHANNELS, 1, 1), 127, dtype="int8")
    try:
        out = mx.nd.contrib.quantized_conv(
            data, weight, mx.nd.array([0.0]), mx.nd.array([255.0]), mx.nd.array([-127.0]),
            mx.nd.array([127.0]), kernel=(1, 1), num_filter=_PROBE_CHANNELS, no_bias=True)
        value = int(out[0].asnumpy().ravel()[0])
    except (mx.base.MXNetError, AttributeError):
        return False
    return value < _PROBE_CHANNELS * 255 * 127
