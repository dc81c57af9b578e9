"""Data in: the canonical KPI frame (contract), the sources that produce it, the synthetic feed, the Great
Expectations checks and the prepared frames the detectors read. Nothing here knows about stages,
MLflow or serving."""
