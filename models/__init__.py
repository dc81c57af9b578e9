"""kpiguard detectors. Importable with only torch, numpy and pandas installed."""
