"""Guards against MXNet 1.9.1 int8 failures that kill or break a quantized network (issue #13).

Each guard is a function over a graph as a JSON dict (``json.loads(sym.tojson())``): it
either rewrites the dict in place (exactly, in fp32) or returns the nodes that must stay
fp32 and why. None of them imports MXNet (whether this process can run an int8 LSTM at
all is probed by :func:`gluon_quant._mxnet.int8_lstm_runs`).

Where each guard belongs in the pipeline (trace -> fuse -> quantize -> calibrate ->
post-quantization fusion -> SymbolBlock):

============================  ================================  ==========================
guard                         graph                             returns
============================  ================================  ==========================
:func:`canonical_activations` traced fp32 graph, before fusion  rewritten nodes (in place)
:func:`flatten_fc_inputs`     traced fp32 graph, before fusion  inserted nodes (in place)
:func:`unquantizable_rnns`    fused fp32 graph                  ``{node: reason}`` to exclude
:func:`stop_rnn_gradients`    final int8 graph                  rewritten nodes (in place)
:func:`grouped_per_tensor`    final int8 graph                  inserted nodes (in place)
============================  ================================  ==========================
"""
import collections
import json
import logging

from ..backends import ONEDNN
from .rewrites import append_nodes as _append_nodes
from .rewrites import reachable as _reachable
from .rewrites import is_noop, private_attrs
from .inspect import is_true

_log = logging.getLogger(__name__)

__all__ = ["separate_broken_fusions", "shared_fusion_outputs", "mixed_int8_outputs",
           "MIXED_READERS_REASON", "unsized_state_sums",
           "unsigned_relus", "entry_dtype",
           "chained_dequantizes",
           "canonical_activations", "flatten_fc_inputs", "unquantizable_rnns",
           "stop_rnn_gradients", "grouped_per_tensor", "FUSABLE_ACTIVATIONS"]


def _consumers(graph):
    """``(node index, output index) -> [(consumer index, input position)]``; heads as -1."""
    found = collections.defaultdict(list)
    for index, node in enumerate(graph["nodes"]):
        for pos, entry in enumerate(node["inputs"]):
            found[(entry[0], entry[1])].append((index, pos))
    for pos, head in enumerate(graph["heads"]):
        found[(head[0], head[1])].append((-1, pos))
    return found


# --------------------------------------------------------------------------- activations

#: Standalone operators with an exact ``Activation(act_type=...)`` equivalent.
FUSABLE_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
                       "softsign": "softsign",
                       # what npx.relu, npx.sigmoid and np.tanh trace to (NumPy mode)
                       "_npx_relu": "relu", "_npx_sigmoid": "sigmoid", "_npi_tanh": "tanh"}


def canonical_activations(graph, ops=tuple(FUSABLE_ACTIVATIONS)):
    """Rewrite ``relu(x)``, ``sigmoid(x)``, ``tanh(x)`` nodes as ``Activation(x, act_type)``.

    Root cause: oneDNN's fusion passes (MXNet 1.9.1 ``src/operator/subgraph/mkldnn/
    mkldnn_conv_property.h`` and ``mkldnn_fc_property.h``) only match the ``Activation``
    operator (plus ``LeakyReLU`` and ``clip``), never the standalone ``relu``/``sigmoid``/
    ``tanh`` operators that ``F.relu`` etc. trace to. In ``MKLDNN_QUANTIZE`` (the pass
    gluon_quant runs) an ``Activation`` is fused into a convolution or FC only when
    ``SupportQuantizedMKLDNNAct`` holds, i.e. for ``act_type='relu'``; the quantization pass
    also has an int8 kernel (``_contrib_quantized_act``) for ``Activation(relu)`` only. So
    ``F.relu`` after a conv costs a dequantize/fp32 relu/quantize round trip, and after a
    residual sum it leaves the fused sum with an int8 output fed by a uint8 operand (the
    case :func:`gluon_quant.graph.fusedsum.fused_sum_dtypes` has to re-quantize).
    ``sigmoid``/``tanh``/``softsign`` are rewritten too: they stay fp32 in int8 graphs
    either way, but ``Activation`` runs oneDNN's eltwise kernel, where MXNet's own
    ``sigmoid`` and ``tanh`` operators are 9x and 30x slower (6.9 and 27 ms against 0.75
    and 0.9 ms on a 8x64x56x56 tensor, 2 threads): 37 of a 6-layer Swish CNN's 82 ms in
    int8.

    Outputs are the same in fp32: relu is bit-identical; sigmoid/tanh may differ in the
    last bit (oneDNN's eltwise kernel instead of mshadow's).

    Parameters
    ----------
    graph : dict
        The traced fp32 graph (modified in place). Node names are kept.
    ops : iterable of str
        Which standalone operators to rewrite (keys of :data:`FUSABLE_ACTIVATIONS`).

    Returns
    -------
    dict of str to str
        Rewritten node name -> its ``act_type``.
    """
    wanted = {op: FUSABLE_ACTIVATIONS[op] for op in ops}
    rewritten = {}
    for node in graph["nodes"]:
        if node["op"] in wanted and len(node["inputs"]) == 1:
            act = wanted[node["op"]]
            # Keep private attributes (__profiler_scope__, __layout__...); the operator has
            # no parameters of its own.
            attrs = private_attrs(node)
            attrs["act_type"] = act
            node["op"], node["attrs"] = "Activation", attrs
            rewritten[node["name"]] = act
    return rewritten


# ------------------------------------------------------------------ FC after oneDNN op

#: Operators whose oneDNN kernel can leave its output in a blocked (oneDNN) layout.
_ONEDNN_LAYOUT_OPS = ("Pooling", "Convolution", "Deconvolution", "BatchNorm", "Activation",
                      "LeakyReLU", "LRN", "elemwise_add", "add_n", "ElementWiseSum", "Concat",
                      "_sg_mkldnn_conv", "_contrib_AdaptiveAvgPooling2D")
_FLATTENING_OPS = ("Flatten", "flatten", "Reshape", "reshape", "FullyConnected",
                   "_sg_mkldnn_fully_connected")


def _is_global_pool(node):
    attrs = node.get("attrs") or {}
    if node["op"] == "_contrib_AdaptiveAvgPooling2D":
        return attrs.get("output_size", "()").replace(" ", "") in ("1", "(1,1)", "(1,)", "[1,1]")
    return node["op"] == "Pooling" and is_true(attrs.get("global_pool", "False"))


def flatten_fc_inputs(graph, only_with_squeeze=False):
    """Insert ``Flatten`` between a oneDNN operator and the ``FullyConnected`` it feeds.

    Root cause: ``SgMKLDNNFCOp::Forward`` (MXNet 1.9.1 ``src/operator/subgraph/mkldnn/
    mkldnn_fc.cc``, the fused FC that both the fp32 calibration graph and the int8 graph
    use) decides on its *first* call whether its input needs a reorder
    (``reorder_data_ = data.IsMKLDNNData()``) and never checks again; later calls read the
    input with ``data.data()``. With static memory (``CachedOp`` with ``static_alloc`` and
    ``static_shape``, as the calibration runner and the int8 block use, or an Executor)
    arrays keep their buffers, and the oneDNN layout state, from one run to the next, and
    the pooled vector feeding the FC shares its buffer with the squeeze vector of a
    squeeze-excite block (inferred: the failure needs both to have the same ``N x C x 1 x 1``
    size). The first run hands the FC a plain array, the later ones an array in a oneDNN
    blocked layout, and the FC fails with ``Check failed: !IsMKLDNNData(): We can't generate
    TBlob for MKLDNN data``. It needs a squeeze-excite block whose squeeze vector has the same
    size as the head's pooled vector (SE ``Pooling`` -> 1x1 conv; head ``Pooling`` ->
    ``Dense``), e.g. depthwise conv + hard-swish + SE + pointwise conv with as many channels
    as the SE block. ``Flatten`` always hands the FC a plain 2-D array, and it is exact
    (``FullyConnected(flatten=True)`` flattens anyway) and has an int8 kernel
    (``_contrib_quantized_flatten``), so no quantize/dequantize pair is added.

    Only FCs with ``flatten=True`` fed by an operator that can write a oneDNN layout are
    rewritten (an FC after ``Flatten``, ``reshape``, another FC, or an input is left alone),
    also through inference no-ops between them: MXNet's fusion removes a ``Dropout``, and
    SENet-154's ``Pooling -> Dropout -> Dense`` head then failed the same way (the int8
    graph's first run found the pooling by bisection, a minute and a half of rebuilds).
    The rewrite changes the fused graph, hence its fingerprint: calibration tables saved for
    a net with ``Pooling -> Dense`` before the guard existed no longer match it.
    ``only_with_squeeze=True`` limits the rewrite to graphs where a convolution reads a
    globally pooled tensor (the squeeze-excite pattern, the only one seen to trigger the
    bug), leaving every other graph and its fingerprint unchanged.

    Parameters
    ----------
    graph : dict
        The traced (or fused) fp32 graph, modified in place.
    only_with_squeeze : bool, default False
        Rewrite only graphs that have a convolution fed by a global average pooling.

    Returns
    -------
    list of str
        Names of the inserted ``Flatten`` nodes (``<fc name>_flatten``).
    """
    nodes = graph["nodes"]
    if only_with_squeeze and not any(
            node["op"] in ("Convolution", "_sg_mkldnn_conv") and node["inputs"]
            and _is_global_pool(nodes[node["inputs"][0][0]]) for node in nodes):
        return []
    new, inserted = [], []
    for node in nodes:
        if node["op"] not in ("FullyConnected", "_sg_mkldnn_fully_connected"):
            continue
        if not is_true((node.get("attrs") or {}).get("flatten", "True")):
            continue
        if node["op"] == "_sg_mkldnn_fully_connected" and is_true(
                (node.get("attrs") or {}).get("quantized", "False")):
            continue  # an int8 graph: too late, its input entries carry ranges
        src = nodes[node["inputs"][0][0]]
        while is_noop(src) and src["inputs"]:     # a Dropout the fusion removes
            src = nodes[src["inputs"][0][0]]
        if src["op"] == "null" or src["op"] in _FLATTENING_OPS or (
                src["op"] not in _ONEDNN_LAYOUT_OPS):
            continue
        name = node["name"] + "_flatten"
        new.append({"op": "Flatten", "name": name, "attrs": {},
                    "inputs": [list(node["inputs"][0])]})
        node["inputs"][0] = [len(nodes) + len(new) - 1, 0, 0]
        inserted.append(name)
    if new:
        _append_nodes(graph, new)
    return inserted


# ------------------------------------------------------------------------------ RNN

#: Operators MXNet 1.9.1's quantization pass replaces by an int8 one (CPU).
_QUANTIZABLE_OPS = ONEDNN.pass_quantizes

RNN_MODE_REASON = ("MXNet 1.9.1 has an int8 RNN for mode='lstm' only (this is %r); "
                   "_contrib_quantized_rnn aborts on any other mode")
RNN_STATES_REASON = ("int8 LSTM whose state outputs are only partly used: the unused one "
                     "gets a non-zero gradient placeholder and the int8 block cannot be built "
                     "(_contrib_quantized_rnn has no FGradient)")
RNN_PRODUCER_REASON = ("feeds the data input of int8 LSTM %s, which takes uint8 from its own "
                       "asymmetric quantize only; an int8 %s would hand it int8 ('Quantized "
                       "RNN operator only supports uint8 input')")
RNN_UNSUPPORTED_REASON = "int8 LSTM cannot run in this process: %s"
RNN_ACCURACY_REASON = ("int8 LSTM is opt-in (int8_lstm=True): MXNet 1.9.1's int8 LSTM runs only "
                       "with oneDNN capped below VNNI, and then loses accuracy to int16 "
                       "saturation (cosine 0.77-0.96 to fp32 in tests)")


def unquantizable_rnns(graph, int8_lstm=False):
    """RNN nodes (and their producers) that must stay fp32, with the reason.

    Root causes (MXNet 1.9.1 ``src/operator/quantization/quantized_rnn.cc`` and
    ``quantize_graph_pass.cc``):

    * ``RNN``'s ``FQuantizable`` says "no" for GRU and vanilla RNN, but the pass still asks
      ``_contrib_quantized_rnn`` for its outputs, which ``CHECK``-fails ("Quantized recurrent
      neural network only supports LSTM"): such nodes must be excluded explicitly.
    * The int8 LSTM takes its data as uint8 from a ``_contrib_quantize_asym`` the pass inserts
      only when the producer is fp32. A quantized producer (``Embedding`` of a language model,
      an FC...) is wired straight in with its int8 output and the graph fails type inference
      ("only supports uint8 input"): the producer must stay fp32 (an int8 embedding is only a
      lookup, nothing is lost).
    * Gluon's LSTM always asks for its states (``state_outputs=True``). If only some of them
      are used, :func:`stop_rnn_gradients` cannot make the int8 block buildable (see there).
    * Unless ``int8_lstm`` is True every LSTM stays fp32: the int8 LSTM needs oneDNN capped
      below VNNI to run at all (:func:`gluon_quant._mxnet.int8_lstm_runs`), and then runs its u8 x s8 GEMMs
      with ``vpmaddubsw``, whose int16 pair sums saturate on the asymmetric uint8 data (zero
      point 128): cosine to fp32 was 0.77-0.96 on LSTM classifiers and language models.

    Parameters
    ----------
    graph : dict
        The fused fp32 graph (the one whose node names ``excluded_symbols`` takes).
    int8_lstm : bool or str, default False
        ``True`` to let LSTMs be quantized (the user asked for it and
        :func:`gluon_quant._mxnet.int8_lstm_runs` returned True); ``False`` or a reason (the probe's answer)
        keeps them fp32.

    Returns
    -------
    dict of str to str
        Node name -> reason, to merge into the excluded nodes before quantization.
    """
    nodes = graph["nodes"]
    consumers = _consumers(graph)
    found = {}
    for index, node in enumerate(nodes):
        if node["op"] != "RNN":
            continue
        attrs = node.get("attrs") or {}
        mode = attrs.get("mode", "lstm")
        if mode != "lstm":
            found[node["name"]] = RNN_MODE_REASON % mode
            continue
        if int8_lstm is not True:
            found[node["name"]] = (RNN_ACCURACY_REASON if int8_lstm is False
                                   else RNN_UNSUPPORTED_REASON % int8_lstm)
            continue
        if is_true(attrs.get("state_outputs", "False")):
            used = [bool(consumers.get((index, k))) for k in (1, 2)]
            if any(used) and not all(used):
                found[node["name"]] = RNN_STATES_REASON
                continue
        src = nodes[node["inputs"][0][0]]
        if src["op"] in _QUANTIZABLE_OPS:
            found.setdefault(src["name"], RNN_PRODUCER_REASON % (node["name"], src["op"]))
    return found


def stop_rnn_gradients(graph):
    """Make an int8 graph with ``_contrib_quantized_rnn`` buildable as a Gluon block.

    Root cause: a ``CachedOp`` (what ``SymbolBlock``/``hybridize`` run) always builds the
    backward graph with respect to every input, whatever ``grad_req`` or autograd mode
    (MXNet 1.9.1 ``src/imperative/cached_op.h``, ``CreateBackwardGraph``). The gradient pass
    aborts on an operator without ``FGradient`` unless every gradient reaching it is a
    zero node (``zeros_like``/``_zeros``). ``_contrib_quantized_rnn`` has no ``FGradient``
    and outputs fp32, which flows through fp32 operators (``SwapAxis``, ``mean``...) that
    do pass gradients; and an unused output gets ``_zeros_without_dtype``, which does not
    count as zero. Hence "Operator _contrib_quantized_rnn is non-differentiable because it
    didn't register FGradient attribute" on the first call of the int8 block (MXNet's own
    ``quantize_net_v2`` fails the same way on a Gluon LSTM).

    The rewrite, exact at inference: every used output of a quantized RNN goes through
    ``BlockGrad`` (identity forward, zero gradient); when no state output is used,
    ``state_outputs`` is turned off so that the node has one output. A node whose state
    outputs are only partly used is left alone (keep it fp32: :func:`unquantizable_rnns`).

    Parameters
    ----------
    graph : dict
        The final int8 graph (after post-quantization fusion), modified in place.

    Returns
    -------
    list of str
        Names of the quantized RNN nodes rewritten.
    """
    nodes = graph["nodes"]
    consumers = _consumers(graph)
    new, done = [], []
    for index, node in enumerate(nodes):
        if node["op"] != "_contrib_quantized_rnn":
            continue
        attrs = node.setdefault("attrs", {})
        count = 3 if is_true(attrs.get("state_outputs", "False")) else 1
        used = [k for k in range(count) if consumers.get((index, k))]
        if count == 3 and used == [0]:
            attrs["state_outputs"] = "False"
        elif count == 3 and used != [0, 1, 2]:
            continue
        for k in used:
            stop = len(nodes) + len(new)
            new.append({"op": "BlockGrad", "name": "%s_stopgrad%d" % (node["name"], k),
                        "attrs": {}, "inputs": [[index, k, 0]]})
            for user, pos in consumers[(index, k)]:
                if user == -1:
                    graph["heads"][pos] = [stop, 0, 0]
                else:
                    nodes[user]["inputs"][pos] = [stop, 0, 0]
        done.append(node["name"])
    if new:
        _append_nodes(graph, new)
    return done




# ------------------------------------------------------------------- broken int8 fusions

#: ``(layer operator, LeakyReLU act_type)`` pairs whose oneDNN int8 fusion is wrong in MXNet
#: 1.9.1 (measured, conv/dense + activation + conv/dense, random weights):
#: Convolution+LeakyReLU(gelu) computes a ReLU (negative outputs become 0; cosine 0.970),
#: FullyConnected+LeakyReLU(leaky) emits uint8 (every negative output is 0; 0.995). Every
#: other pairing measured right (>= 0.9996); MXNet's own flow has the same two bugs.
BROKEN_FUSIONS = (("Convolution", "gelu"), ("FullyConnected", "leaky"))


def separate_broken_fusions(graph, pairs=BROKEN_FUSIONS):
    """Put a ``_copy`` between a layer and an activation whose int8 fusion is wrong.

    The copy (exact) stops oneDNN's fusion pass from matching the pair: the layer runs in
    int8 on its own, the activation in fp32 after it.

    Returns
    -------
    list of str
        Names of the inserted copies.
    """
    nodes = graph["nodes"]
    inserted = []
    for node in list(nodes):
        act = (node.get("attrs") or {}).get("act_type")
        if node["op"] != "LeakyReLU" or not node["inputs"]:
            continue
        src = node["inputs"][0]
        layer = nodes[src[0]]
        while layer["op"] == "BatchNorm" and layer["inputs"]:   # conv + BN + act fuse too
            layer = nodes[layer["inputs"][0][0]]
        if (layer["op"], act) not in pairs:
            continue
        copy = {"op": "BlockGrad", "name": node["name"] + "_unfused", "inputs": [list(src)]}
        nodes.append(copy)
        node["inputs"][0] = [len(nodes) - 1, 0, 0]
        inserted.append(copy["name"])
    if inserted:
        _append_nodes(graph, [])      # back into topological order
    return inserted


#: Layers oneDNN's fusion pass extends with a reader of their output, and the readers it
#: can absorb (MXNet 1.9.1 ``src/operator/subgraph/mkldnn/mkldnn_fc_property.h`` and
#: ``mkldnn_conv_property.h``; a convolution's BatchNorm passes the chain on).
_ABSORBED_READERS = frozenset(("Activation", "LeakyReLU", "clip", "abs", "square", "sqrt",
                               "exp", "BatchNorm", "elemwise_add", "_plus", "_add"))
#: A convolution's fusion counts the other reader nodes, except for these readers.
_CONV_MISCOUNTED = frozenset(("LeakyReLU", "clip"))


def shared_fusion_outputs(graph, context=None):  # pylint: disable=unused-argument
    """Keep oneDNN's fusion from absorbing a reader of a layer output read elsewhere too.

    MXNet 1.9.1's fusion matches a dense layer or convolution (and its BatchNorm) with the
    first reader of its output it visits, whether or not others read that output too, and
    the fused node has one output. The other readers, and the network's outputs, which it
    does not count as readers at all, then get the absorbed operator's result, or the
    absorbed operator is lost: ``return y, F.relu(y)`` returned ``y`` twice,
    ``2 * y + F.relu(y)`` after a dense layer, ``y + F.clip(y, 0, 6)`` and
    ``y + F.LeakyReLU(y)`` after a convolution were wrong in fp32 already (cosine
    0.68-0.98 to the net). Such readers now read the output through a ``BlockGrad``
    (exact), which the fusion does not absorb: the layer runs without them fused. A
    convolution's fusion does count other reader nodes for Activation and sums
    (MobileNetV2's block outputs, read by the next block and its shortcut sum, are right
    and left fused); there only outputs, LeakyReLU/clip readers and a BatchNorm beside
    other readers need it (a pre-activation block on a convolution's output).

    Parameters
    ----------
    graph : dict
        The traced fp32 graph (modified in place).
    context : PassContext, optional

    Returns
    -------
    dict
        Empty: no node has to stay fp32 (a pass's contract).
    """
    nodes = graph["nodes"]
    readers = collections.defaultdict(list)
    for index, node in enumerate(nodes):
        for entry in node["inputs"]:
            readers[(entry[0], entry[1])].append(index)
    for head in graph["heads"]:
        readers[(head[0], head[1])].append(None)
    inserted = []
    for (src, out), reading in sorted(readers.items()):
        layer = _fused_layer(nodes, src)
        absorbed = sorted({r for r in reading if r is not None
                           and nodes[r]["op"] in _ABSORBED_READERS})
        if layer["op"] == "Convolution" and None not in reading:
            # A BatchNorm absorbed into the convolution itself (not after its sum) left
            # the other readers the normalized output, or a fused node shape inference
            # rejects: pre-activation CIFAR ResNets, whose stem convolution feeds the first
            # block's BatchNorm and its shortcut sum (GluonCV's cifar_resnet56_v2: logit
            # cosine 0.949 in fp32; ``y + conv(bn(y))`` failed to build).
            absorbed = [r for r in absorbed if nodes[r]["op"] in _CONV_MISCOUNTED or (
                nodes[r]["op"] == "BatchNorm" and nodes[src] is layer)]
        if layer["op"] not in ("FullyConnected", "Convolution") or len(reading) < 2 \
                or not absorbed:
            continue
        nodes.append({"op": "BlockGrad", "name": nodes[src]["name"] + "_shared",
                      "inputs": [[src, out, 0]]})
        for r in absorbed:
            nodes[r]["inputs"] = [[len(nodes) - 1, 0, 0] if (e[0], e[1]) == (src, out)
                                  else e for e in nodes[r]["inputs"]]
        inserted.append(nodes[-1]["name"])
    if inserted:
        _append_nodes(graph, [])      # back into topological order
        _log.debug("Outputs read by several readers kept out of fusions: %s", inserted)
    return {}


def _fused_layer(nodes, index):
    """The dense layer or convolution whose fused node would end at node ``index``: itself,
    the convolution before its BatchNorm, or the one a sum adds to (else the node)."""
    node = nodes[index]
    if node["op"] in ("elemwise_add", "_plus", "_add"):
        for entry in node["inputs"]:
            layer = _fused_layer(nodes, entry[0]) if nodes[entry[0]]["op"] != node["op"] \
                else nodes[entry[0]]
            if layer["op"] == "Convolution":
                return layer
        return node
    if node["op"] == "BatchNorm" and node["inputs"]:
        return nodes[node["inputs"][0][0]]
    return node


#: Int8 operators (as MXNet's quantization pass writes them, ``quantized_<name>``) whose
#: output MXNet cannot hand to int8 and fp32 readers at once: dense layers and products.
_SPLIT_PRODUCERS = frozenset(("_sg_mkldnn_fully_connected", "_contrib_quantized_fully_connected",
                              "_contrib_quantized_elemwise_mul"))
MIXED_READERS_REASON = ("its output feeds both int8 layers and fp32 readers or the network's "
                        "outputs, which MXNet 1.9.1's int8 fusion mishandles (a crash or an "
                        "invalid graph)")


def mixed_int8_outputs(graph, context=None):  # pylint: disable=unused-argument
    """Int8 dense layers and products whose output int8 and fp32 readers share stay fp32.

    MXNet 1.9.1's post-quantization fusion mishandles an int8 dense layer or
    ``elemwise_mul`` whose output (through its requantize) goes both to an int8 operator
    and to a dequantize, for an fp32 reader or the network's outputs (``return head(feat),
    feat``; ``head(feat)`` beside ``tanh(feat)``): it segfaults, or leaves a dequantize
    reading an output the fused node no longer has. (An output that fp32 layers read as
    well is :func:`chained_dequantizes`' case.) A convolution's output is handled
    correctly and is left alone.

    Decided on the quantized graph, in the pipeline's re-plan loop, where every reason a
    reader stays fp32 is known: an operator MXNet's pass could quantize but the backend
    keeps fp32 (``elemwise_mul``, a sigmoid ``Activation``), one a later pass sends back
    (:func:`~gluon_quant.graph.islands.small_int8_regions`), one the user excludes. Judged
    on the fused graph by the readers' operators (as before), GluonNLP's ``Highway`` after
    a dense layer (``gate * relu(W x) + (1 - gate) * x``: the dense output read by the
    int8 ``W x`` and the fp32 product) killed the process in the post-quantization fusion
    (a segmentation fault in ``sg::CutGraphInputs``).

    Parameters
    ----------
    graph : dict
        The quantized graph (not modified).
    context : PassContext, optional

    Returns
    -------
    dict of str to str
        Fused-graph node name -> reason.
    """
    nodes = graph["nodes"]
    readers = _consumers(graph)
    found = {}
    for index, node in enumerate(nodes):
        if node["op"] not in _SPLIT_PRODUCERS \
                or not node["name"].startswith("quantized_"):
            continue
        entries = []
        for reader, position in readers.get((index, 0), []):
            if reader >= 0 and nodes[reader]["op"] == "_contrib_requantize":
                entries += readers.get((reader, 0), [])
            else:
                entries.append((reader, position))
        if {r < 0 or nodes[r]["op"] == "_contrib_dequantize" for r, _ in entries} \
                == {True, False}:
            found[node["name"][len("quantized_"):]] = MIXED_READERS_REASON
    return found


#: Operators creating a tensor from a ``shape`` attribute, where 0 means "not known yet".
_SIZED_CREATORS = frozenset(("_zeros", "_ones", "_full"))


def unsized_state_sums(graph):
    """Additions reading a tensor whose batch size is unknown until run time stay fp32.

    An RNN cell's ``begin_state`` (``F.zeros(shape=(0, hidden))``), unrolled, makes the
    first step's ``i2h(x) + h2h(state)`` read a tensor of shape ``(0, 4 * hidden)``: the
    fp32 ``elemwise_add`` infers the 0 from its other input, MXNet 1.9.1's int8 one checks
    both shapes first and fails at the first run ("Check failed: (*in_shape)[0] ==
    (*in_shape)[1] ([8,256] vs. [-1,256])"), which the first-run fallback then caught with
    a warning and a second build. Such a tensor is followed from its creator through the
    layers reading it, up to an element-wise operator whose other input gives the shape.

    Returns
    -------
    dict of str to str
        Node name -> reason.
    """
    nodes = graph["nodes"]
    unsized, found = set(), {}
    for index, node in enumerate(nodes):
        attrs = node.get("attrs") or {}
        if node["op"] in _SIZED_CREATORS:
            shape = str(attrs.get("shape", "")).strip("()[] ").replace(" ", "").split(",")
            if "0" in shape:
                unsized.add(index)
            continue
        reads = [e[0] in unsized for e in node["inputs"]]
        if not any(reads):
            continue
        if node["op"] == "elemwise_add":
            found[node["name"]] = (
                "it adds a tensor whose batch size is known only at run time (a state made "
                "by F.zeros(shape=(0, ...)), such as an RNN cell's begin_state): MXNet "
                "1.9.1's int8 addition checks both shapes before running and fails")
        if node["op"].startswith(("elemwise_", "broadcast_", "_npi_")) and not all(reads):
            continue    # the other operand sizes the result
        unsized.add(index)
    return found


# --------------------------------------------------------------------------- unsigned relus

def entry_dtype(dtypes, nodes, entry):
    """The inferred dtype of a graph entry ``[node, output, version]`` (or None): one-output
    nodes name it ``X_output``, several outputs ``X_output0``, ``X_output1``..."""
    src = nodes[entry[0]]
    if src["op"] == "null":
        return dtypes.get(src["name"])
    base = src["name"] + "_output"
    return dtypes.get(base + str(entry[1])) or (dtypes.get(base) if entry[1] == 0 else None)


def unsigned_relus(graph, dtypes):
    """Drop the int8 ReLUs whose input is uint8: their readers read that input instead.

    MXNet 1.9.1's ``_contrib_quantized_act`` declares an int8 output whatever its input,
    while its oneDNN kernel copies a uint8 input's bytes through: every value of 128 or
    more then reads as negative (a ReLU after a dense layer with its own ReLU fused, kept
    apart because the layer's output is also read elsewhere: 0.32 cosine to fp32). A
    ReLU of a uint8 tensor is the identity, so dropping it is exact, and its range (the
    one it passed through) is its input's.

    Parameters
    ----------
    graph : dict
        The final int8 graph (modified in place).
    dtypes : dict of str to str
        Inferred dtype name of each internal output (``node_output``...) and input.

    Returns
    -------
    list of str
        Names of the dropped nodes.
    """
    nodes = graph["nodes"]
    bypass = {}
    for index, node in enumerate(nodes):
        if node["op"] != "_contrib_quantized_act" or len(node["inputs"]) != 3 \
                or (node.get("attrs") or {}).get("act_type", "relu") != "relu":
            continue
        if entry_dtype(dtypes, nodes, node["inputs"][0]) == "uint8":
            bypass[index] = node["inputs"]
    _read_through(graph, bypass)    # outputs data, min, max: its inputs data, min, max
    return [nodes[i]["name"] for i in bypass]


def _read_through(graph, sources):
    """Make every reader of output ``k`` of a node ``i`` of ``sources`` read
    ``sources[i][k]`` instead (following chains), and drop the nodes nothing reads now."""
    if not sources:
        return

    def through(entry):
        while entry[0] in sources and entry[1] < len(sources[entry[0]]):
            entry = sources[entry[0]][entry[1]]
        return list(entry)

    for node in graph["nodes"]:
        node["inputs"] = [through(e) for e in node["inputs"]]
    graph["heads"] = [through(h) for h in graph["heads"]]
    graph.pop("node_row_ptr", None)
    graph.update(_reachable(graph["nodes"], graph["heads"], graph.get("attrs")))


# --------------------------------------------------------------------- chained dequantizes

def chained_dequantizes(graph, context=None):  # pylint: disable=unused-argument
    """Make the network's outputs read a dequantize's result, never dequantize it again.

    Where an int8 node's output is one of the network's outputs and an fp32 operator reads
    it too (``return feat, F.tanh(feat)``; ``return logits, F.argmax(logits, axis=1)``),
    MXNet 1.9.1's quantization pass gives the fp32 reader a dequantize and then, for the
    output, a second dequantize of that dequantize's result, reading its min and max
    outputs, which do not exist: every such network failed to build ("refers to a node
    output that does not exist"). The output now reads the first dequantize.

    An int8 output returned twice (``return y, y``) gets two dequantizes of the same
    entries, both named ``..._dequantize``; the post-quantization fusion then folds one
    into the layer (its output becomes float) and leaves the other reading the layer's
    min and max outputs, which no longer exist. Both outputs now read the first.

    Parameters
    ----------
    graph : dict
        The quantized graph (modified in place).
    context : PassContext, optional

    Returns
    -------
    dict
        Empty: no node has to stay fp32 (a pass's contract).
    """
    nodes = graph["nodes"]
    chained, first = {}, {}
    for i, node in enumerate(nodes):
        if node["op"] != "_contrib_dequantize" or not node["inputs"]:
            continue
        if nodes[node["inputs"][0][0]]["op"] == "_contrib_dequantize":
            chained[i] = node["inputs"][:1]             # its one output: the first's
            continue
        key = json.dumps(node["inputs"])
        if key in first:
            chained[i] = [[first[key], 0, 0]]           # a twin: the first one's output
        else:
            first[key] = i
    if not chained:
        return {}
    _read_through(graph, chained)
    _log.debug("Outputs read %d dequantize(s) directly instead of dequantizing again.",
               len(chained))
    return {}


def grouped_per_tensor(graph, context):
    """Run the grouped int8 convolutions with one weight scale: output int32, requantized.

    MXNet 1.9.1's int8 convolution with 1 < groups < output channels applies its per-
    output-channel weight scales per group (:attr:`~gluon_quant.backends.OpSupport.
    partial_groups`). It uses one scale for the whole weight tensor where its output is
    not requantized inside it (no calibrated range): the convolution then outputs int32
    and its range, and a ``_contrib_requantize`` after it brings the result to the
    calibrated int8/uint8 range its readers had. ResNeXt's grouped 3x3 convolutions ran
    fp32 before (resnext50_32x4d at 160 px, batch 8: 0.125 s -> 0.093 s a batch in int8).
    Only where the backend declares it (``partial_groups_per_tensor``); a grouped
    convolution fused with a sum stayed fp32 in the fused graph already.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing fp32.
    """
    support = context.spec.ops.get("Convolution")
    if support is None or not support.partial_groups_per_tensor:
        return {}
    nodes, added, moved = graph["nodes"], [], {}
    for index, node in enumerate(nodes):
        attrs = node.get("attrs") or {}
        if node["op"] != "_sg_mkldnn_conv" or not is_true(attrs.get("quantized")) \
                or "max_calib_range" not in attrs or is_true(attrs.get("with_sum")):
            continue
        conv = next((m.get("attrs") or {} for sub in node.get("subgraphs") or ()
                     for m in sub["nodes"] if m["op"] == "Convolution"), {})
        groups = int(conv.get("num_group", 1))
        if not 1 < groups < int(conv.get("num_filter", 1)):
            continue
        moved[index] = len(nodes) + len(added)
        added.append({"op": "_contrib_requantize", "name": node["name"] + "_requantize",
                      "attrs": {"min_calib_range": attrs.pop("min_calib_range"),
                                "max_calib_range": attrs.pop("max_calib_range"),
                                "out_type": "auto"},
                      "inputs": [[index, 0, 0], [index, 1, 0], [index, 2, 0]]})
    for reader in nodes:            # readers of (data, min, max) read the requantize's
        reader["inputs"] = [[moved[e[0]], e[1], 0] if e[0] in moved else e
                            for e in reader["inputs"]]
    graph["heads"] = [[moved[h[0]], h[1], 0] if h[0] in moved else h for h in graph["heads"]]
    if added:
        _append_nodes(graph, added)
        _log.debug("Grouped convolutions with one weight scale: %s",
                   [n["name"] for n in added])
    return {}
