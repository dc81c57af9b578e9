"""Serving: the bundle format, its safe loader, the MLflow pyfunc entry file, tracking, the registry and
the champion gate.

``KpiguardModel`` is importable from here because ``pyfunc_model.py``, the code file logged with every
model version, imports it as ``from pipeline.serving import KpiguardModel``: the safe loader
(:mod:`pipeline.serving.store`) accepts a version only when that file's bytes are the installed ones,
so the import line must keep working for every version registered before this package existed.
"""


def __getattr__(name: str):
    if name == "KpiguardModel":  # imported on first use: this package's other modules need no MLflow
        from pipeline.serving.bundle import KpiguardModel

        return KpiguardModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
