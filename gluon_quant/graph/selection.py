"""Resolve the user's ``exclude`` patterns to nodes of the fused graph.

Users name layers the way they know them from their Gluon net: a block's name
(``resnetv10_conv0``), its attribute path (``features.0``), an operator node name
(``resnetv10_conv0_fwd``), a glob pattern over any of these (``*stage4*``) or an
operator type by its ordinary name (``Convolution``, ``FullyConnected``,
``Pooling``; Gluon layer names such as ``Conv2D`` and ``Dense`` work too).
Fusion renames nodes (``sg_mkldnn_conv_bn_act_3``); this module maps the user's
names through the fused nodes' members, so exclusion works before and after fusion.
"""
import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from mxnet.gluon import Block
from mxnet.gluon.nn import HybridSequential, Sequential

from .. import _mxnet
from .._names import suggest
from ..errors import ConfigError

__all__ = ["BlockScope", "block_paths", "block_scopes", "layer_name", "helper_owners",
           "resolve_exclusions", "OP_ALIASES"]

_log = logging.getLogger(__name__)

#: Gluon layer class names accepted as operator types.
OP_ALIASES = {
    "Conv1D": "Convolution", "Conv2D": "Convolution", "Conv3D": "Convolution",
    "Conv2DTranspose": "Deconvolution", "Dense": "FullyConnected",
    "MaxPool2D": "Pooling", "AvgPool2D": "Pooling", "GlobalAvgPool2D": "Pooling",
    "GlobalMaxPool2D": "Pooling", "MaxPool1D": "Pooling", "AvgPool1D": "Pooling",
    "Flatten": "Flatten", "Concatenate": "Concat", "add": "elemwise_add",
}


@dataclass(frozen=True)
class BlockScope:
    """A block of the user's net: its attribute path, its name, its name prefix, which
    block object it is (``ident``: a block registered at two paths has one ``ident``) and
    whether it is one of Gluon's own layers (``layer``: ``nn.Conv2D``, ``rnn.LSTM``...;
    not a container such as ``HybridSequential``), whose operators are that layer."""

    path: str
    name: str
    prefix: str
    ident: int = field(default=0, compare=False)
    layer: bool = field(default=False, compare=False)


def block_scopes(net):
    """Every block of ``net`` (itself included) as a :class:`BlockScope`, outermost first."""
    scopes = []

    def walk(block, path):
        scopes.append(BlockScope(path=path, name=block.name, prefix=block.prefix,
                                 ident=id(block), layer=_gluon_layer(block)))
        for key, child in _mxnet.named_children(block):
            walk(child, key if not path else path + "." + key)

    walk(net, "")
    return scopes


def block_paths(net, exclude):
    """``exclude`` with each Gluon block of ``net`` in it replaced by its attribute path.

    A block's name does not always tell it apart: blocks made with ``prefix=''`` (the
    residual units of Gluon's ResNets and DenseNets, YOLOv3's detection blocks) share
    their parent's name, so ``exclude=[net.features[5][0]]`` by name meant the whole
    stage. The path (``'features.5.0'``) means that block alone. The net itself, and
    blocks not in it, stand for their names; other entries are returned as they are.
    """
    if exclude is None or isinstance(exclude, str) or not isinstance(net, Block):
        return exclude          # a Module has no blocks
    entries = (exclude,) if isinstance(exclude, Block) else exclude
    if not isinstance(entries, (list, tuple, set, frozenset)):
        return exclude          # QuantConfig names the bad type
    paths = {}
    for scope in block_scopes(net):
        paths.setdefault(scope.ident, scope.path)
    return tuple((paths.get(id(e)) or e.name) if isinstance(e, Block) else e
                 for e in entries)


def _gluon_layer(block):
    """Whether ``block`` is one of Gluon's own layers (its class defined in ``mxnet.gluon``),
    not a container of others (``Sequential``, ``HybridSequential`` and their subclasses)."""
    return (type(block).__module__.startswith("mxnet.gluon.")
            and not isinstance(block, (Sequential, HybridSequential)))


def helper_owners(graph, original):
    """The operator nodes a pass added to ``graph`` for another: node name -> the name of
    the original node it was made for.

    The traced-graph passes name the nodes they add after the node they rewrite (a mean
    over axis 1 ``net0_mean0`` runs as ``net0_mean0_view``, ``net0_mean0_deconv``...): a
    node whose name is not in ``original`` belongs to the original node with the longest
    name that, followed by ``_``, starts its own. ``report()`` shows such nodes on their
    owner's row.

    Parameters
    ----------
    graph : dict
        The graph as JSON, after the passes.
    original : set of str
        The names of the operator nodes before them.

    Returns
    -------
    dict of str to str
    """
    # a block's later calls, renamed by unique_names, are original nodes too
    original = set(original) | {n["name"] for n in graph["nodes"]
                                if _CALL.sub("", n["name"]) in original}
    owners = {}
    for node in graph["nodes"]:
        name = node["name"]
        if node["op"] == "null" or name in original:
            continue
        parts = name.split("_")
        owner = next(("_".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)
                      if "_".join(parts[:k]) in original), None)
        if owner is not None:
            owners[name] = owner
    return owners


def layer_name(node, scopes, owners=None):
    """The name users know a GraphNode's main operator by: the innermost block owning it
    where that block is one of Gluon's own layers (``resnetv10_conv0``); else the
    operator's own name (``mynet0_convolution0``, one of the ``F.*`` calls in a block's
    ``hybrid_forward``, or a sum a container's blocks share a prefix for: the block's name
    would not tell them apart). A block the net calls more than once names its later calls
    ``<block> (call 2)``, ... (their operators were renamed ``..._call2`` by
    :func:`~gluon_quant.graph.rewrites.unique_names`). ``exclude=`` takes each of these.
    With ``owners`` (:func:`helper_owners`), a node a pass added is named as the node it
    was made for."""
    main = next((m[0] for m in node.members if m[1] == node.main_op), node.members[0][0])
    main = (owners or {}).get(main, main)
    best = None
    for scope in scopes:
        if scope.prefix and main.startswith(scope.prefix):
            if best is None or len(scope.prefix) > len(best.prefix):
                best = scope
    if best is None or not best.layer:
        return main
    call = _CALL.search(main)
    return best.name + (" (call %s)" % call.group(1) if call else "")


#: The suffix :func:`~gluon_quant.graph.rewrites.unique_names` gives a block's later calls.
_CALL = re.compile(r"_call(\d+)$")


def _owners(op_name, scopes, by_path):
    """Names and paths of the blocks an original operator belongs to.

    Its block is the one with the longest name prefix of the operator; it belongs to that
    block's ancestors in the net (by attribute path) too. Where sibling blocks share that
    prefix (made with ``prefix=''``), the name cannot tell which one made the operator: it
    belongs to their closest common ancestor and above, not to each sibling.
    """
    matching = [s for s in scopes if s.prefix and op_name.startswith(s.prefix)]
    if not matching:
        return []
    longest = max(len(s.prefix) for s in matching)
    tied = [s for s in matching if len(s.prefix) == longest]
    if len({s.ident for s in tied}) == 1:       # one block (maybe registered twice)
        owners = [s.path for s in tied]
    else:
        owners = [_common_path([s.path for s in tied])]
    found = []
    for owner in owners:
        parts = owner.split(".") if owner else []
        for depth in range(len(parts) + 1):      # the owner and each block above it
            scope = by_path.get(".".join(parts[:depth]))
            if scope is not None:                # (None: a child registered as 'a.b')
                found.append(scope.name)
                if scope.path:
                    found.append(scope.path)
    return found


def _common_path(paths):
    """The longest attribute path that every one of ``paths`` is within."""
    parts = [p.split(".") if p else [] for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _node_keys(node, scopes, by_path):
    keys = [node.name, layer_name(node, scopes)]
    for name, _, _ in node.members:
        keys.append(name)
        keys.extend(_owners(name, scopes, by_path))
    return keys


def resolve_exclusions(patterns, graph, scopes, *,
                       warn_unmatched=True) -> Tuple[Dict[str, str], List[str]]:
    """Map exclusion patterns to the graph's node names.

    Parameters
    ----------
    patterns : iterable of str or None
        Layer names, block paths, node names, glob patterns or operator types.
    graph : GraphView
        The (fused) fp32 graph.
    scopes : list of BlockScope
        The user's blocks, from :func:`block_scopes`.
    warn_unmatched : bool, default True
        Log a warning for each pattern that matches nothing.

    Returns
    -------
    excluded : dict
        Node name -> the pattern that excluded it.
    unmatched : list of str
        Patterns that matched nothing (a warning is logged for each, with close names).
    """
    if patterns is None:
        return {}, []
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(
                "exclude entries must be non-empty strings (layer names, glob patterns or "
                "operator types such as 'Convolution'); got %r." % (pattern,))
    by_path = {scope.path: scope for scope in scopes}
    keys = {node.name: _node_keys(node, scopes, by_path) for node in graph}
    excluded, unmatched = {}, []
    for pattern in patterns:
        op_type = OP_ALIASES.get(pattern, pattern)
        hits = [n.name for n in graph if op_type in n.member_ops]
        if not hits:
            is_glob = any(c in pattern for c in "*?[")
            for node in graph:
                for key in keys[node.name]:
                    if key == pattern or (is_glob and fnmatch.fnmatchcase(key, pattern)):
                        hits.append(node.name)
                        break
        if not hits:
            unmatched.append(pattern)
            if not warn_unmatched:
                continue
            candidates = sorted({k for ks in keys.values() for k in ks}
                                | {op for n in graph for op in n.member_ops})
            _log.warning("exclude pattern %r matched no layer of the network.%s", pattern,
                         suggest(pattern, candidates) or
                         " Known layers include: %s." % ", ".join(candidates[:8]))
        for name in hits:
            excluded.setdefault(name, pattern)
    return excluded, unmatched
