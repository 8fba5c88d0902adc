"""dimat: decentralized deep learning by iterative merging and training.

The Python API (the CLI's config and behaviour)::

    import dimat
    result = dimat.run(dimat.compose(["algorithm=dsgd", "backend=inprocess"]), model=MyNet, dataset=my_data)

Extension points: a model factory (`model._target_`), a loader returning a
:class:`dimat.data.Dataset` (`data._target_`), a subclass of
:class:`dimat.algorithms.Algorithm` (`algorithm._target_`), a schedule, a
topology builder or a partitioner — each named by `_target_` in the config or
passed to :func:`run` as an object.
"""

__version__ = "0.1.0"

_API = {
    "compose": "dimat.api", "run": "dimat.api", "resume": "dimat.api", "ConfigError": "dimat.configure",
    "Result": "dimat.experiment", "Dataset": "dimat.data", "Algorithm": "dimat.algorithms",
    "Phase": "dimat.algorithms", "Received": "dimat.algorithms",
}

__all__ = ["Algorithm", "ConfigError", "Dataset", "Phase", "Received", "Result", "compose", "resume", "run"]


def __getattr__(name: str):
    """The API, imported on first use (so `import dimat.data` in an agent host stays light)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dimat' has no attribute {name!r}")
