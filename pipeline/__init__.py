"""kpiguard pipeline: one module per stage, plus the ``kpiguard`` CLI."""
