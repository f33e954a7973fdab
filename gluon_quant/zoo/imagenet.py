"""The 1000 ImageNet (ILSVRC-2012) class names, read from an installed package.

GluonCV ships the WordNet ids and names of the ILSVRC-2012 classes as a Python
literal (``_ILSVRC2012_Attr`` in ``gluoncv/data/imagenet/classification.py``).
The file is parsed with :mod:`ast` and :func:`ast.literal_eval` rather than
imported: importing ``gluoncv`` takes seconds and runs its package
initialisation, whereas the literal is plain data.
"""

import ast
import functools
import importlib.util
import logging
import os

from ..errors import ArtifactError, ConfigError

__all__ = ["imagenet_class_names"]

_LOG = logging.getLogger(__name__)

_NUM_CLASSES = 1000
_GLUONCV_FILE = os.path.join("data", "imagenet", "classification.py")
_GLUONCV_VARIABLE = "_ILSVRC2012_Attr"


def _gluoncv_file():
    spec = importlib.util.find_spec("gluoncv")  # locates the package without importing it
    if spec is not None:
        for folder in spec.submodule_search_locations or ():
            path = os.path.join(folder, _GLUONCV_FILE)
            if os.path.isfile(path):
                return path
    raise ConfigError("the ImageNet class names are read from GluonCV, which is not installed: "
                      "pip install gluoncv==0.10.5.post0")


@functools.lru_cache(maxsize=1)
def _load_class_names():
    path = _gluoncv_file()
    try:
        with open(path, encoding="utf-8") as stream:
            tree = ast.parse(stream.read(), filename=path)
    except (OSError, SyntaxError, ValueError) as err:
        raise ArtifactError(f"cannot parse the ImageNet class list in {path!r}: {err}") from err
    for node in tree.body:
        if (isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == _GLUONCV_VARIABLE
                        for t in node.targets)):
            try:
                entries = ast.literal_eval(node.value)
            except ValueError as err:
                raise ArtifactError(f"{_GLUONCV_VARIABLE} in {path!r} is not a literal") from err
            break
    else:
        raise ArtifactError(f"{path!r} defines no {_GLUONCV_VARIABLE}")
    # Each entry is (WordNet id, short name, long name).
    if (not isinstance(entries, list) or len(entries) != _NUM_CLASSES
            or not all(isinstance(e, tuple) and len(e) == 3 and isinstance(e[1], str)
                       for e in entries)):
        raise ArtifactError(f"{_GLUONCV_VARIABLE} in {path!r} is not a list of "
                            f"{_NUM_CLASSES} (wnid, name, long name) tuples")
    _LOG.debug("read %d ImageNet class names from %s", len(entries), path)
    return tuple(entry[1] for entry in entries)


def imagenet_class_names():
    """Return the short names of the 1000 ImageNet classes, in logit order.

    Index ``i`` names logit ``i`` of ImageNet classifiers trained on the usual
    sorted-WordNet-id order (EfficientNet-Lite0, Gluon's model zoo, torchvision),
    e.g. 281 ``'tabby'``, 282 ``'tiger cat'``, 285 ``'Egyptian cat'``.  Names are
    not all unique (``'crane'`` is both a bird and a machine): use the index
    as the identity.

    Returns
    -------
    list of str
        1000 names; a new list on each call.

    Raises
    ------
    ConfigError
        GluonCV, whose data file holds the names, is not installed.
    ArtifactError
        That file does not hold the expected list.
    """
    return list(_load_class_names())
