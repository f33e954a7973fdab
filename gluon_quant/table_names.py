"""A calibration table of the same network under other Gluon block names.

Gluon numbers the blocks it builds: the same net built again in one process (a notebook
cell run twice) is ``resnetv11_...`` where its table says ``resnetv10_...``, and blocks
created outside ``with self.name_scope():`` are numbered across the whole process
(``conv1_``, ``dense1_`` where the table says ``conv0_``, ``dense0_``). The weights load
(``save_parameters`` uses structural names) but the table's names miss. These functions
find the renaming, check it exactly against the table's fingerprint, and apply it.
"""
import re

from .calib import CalibrationTable
from .weights import digest

__all__ = ["renamed_prefixes", "numbered_apart", "with_prefixes"]


def _table_names(table):
    """The names a table holds: its ranges' tensors and its weight digests' parameters."""
    return set(table.keys()) | set(table.meta.get(digest.META_KEY) or ())


def _head(name):
    return name.split("_", 1)[0] + "_"


def _unnumbered(name):
    return re.sub(r"\d+", "#", name)


def _numbers(name):
    return [int(d) for d in re.findall(r"\d+", name)]


def renamed_prefixes(table, view, here):
    """``{the table's block prefix: this graph's}`` when the graph ``view``, with those
    prefixes put back, is the graph the table was computed on (the same layers, wired
    alike); else None.

    The candidates come from the names the table holds and this graph lacks (``here``: the
    graph's calibrated tensors and parameters): each of their prefixes (``resnetv10_``,
    ``conv0_``) is paired with a prefix of this graph's that differs from it in its numbers
    only, in the order of the numbers.
    """
    names = _table_names(table)
    unmatched = [n for n in names if n not in here]
    if not unmatched or not all("_" in n for n in unmatched):
        return None
    old = {_head(n) for n in unmatched}
    new = {_head(n) for n in here if "_" in n} - {_head(n) for n in names if "_" in n}
    mapping = {}
    for kind in {_unnumbered(p) for p in old}:
        olds = sorted((p for p in old if _unnumbered(p) == kind), key=_numbers)
        news = sorted((p for p in new if _unnumbered(p) == kind), key=_numbers)
        if len(olds) != len(news):
            return None
        mapping.update(zip(olds, news))
    if not all(mapping[_head(n)] + n[len(_head(n)):] in here for n in unmatched):
        return None
    back = view.renamed({b: a for a, b in mapping.items()})
    return mapping if table.fingerprint in (
        (back.fingerprint(),) + back.earlier_fingerprints()) else None


def numbered_apart(table, here):
    """The names the table holds and this graph lacks (``here``), where each is one of this
    graph's but for its numbers (``conv0_weight`` for ``conv1_weight``); empty when any is
    not."""
    shapes = {_unnumbered(n) for n in here}
    unmatched = [n for n in _table_names(table) if n not in here]
    return unmatched if unmatched and all(_unnumbered(n) in shapes for n in unmatched) else []


def with_prefixes(table, mapping):
    """``table`` with each prefix of ``mapping`` replaced by its value at the start of every
    name it holds (ranges, and the names in its meta: weight digests, bias corrections,
    AdaRound and equalization choices, settings)."""
    def rename(value):
        if isinstance(value, dict):
            return {rename(k): rename(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(rename(v) for v in value)
        if isinstance(value, str) and "_" in value and _head(value) in mapping:
            return mapping[_head(value)] + value[len(_head(value)):]
        return value
    return CalibrationTable(rename(dict(table.items())), method=table.method,
                            fingerprint=table.fingerprint, meta=rename(dict(table.meta)))
