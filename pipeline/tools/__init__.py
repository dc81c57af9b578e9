"""Tools beside the pipeline: ``kpiguard bench`` (the stages on any source, outside DVC) and ``kpiguard
speed`` (training and scoring throughput)."""
