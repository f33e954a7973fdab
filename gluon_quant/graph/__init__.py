"""Passes and views over MXNet symbol graphs: inspection, fingerprints and layer selection."""
from .inspect import GraphView, GraphNode
from .selection import BlockScope, block_scopes, layer_name, resolve_exclusions

__all__ = ["GraphView", "GraphNode", "BlockScope", "block_scopes", "layer_name",
           "resolve_exclusions"]
