"""Every detector's hyperparameters: one config dataclass per detector, importable without torch.

``models/configs/<name>.py`` holds the config class of the detector ``models/<name>.py`` (the registry,
:data:`models.registry.DETECTORS`, names both classes), and ``shared.py`` the bases several configs
extend. The detectors' modules import torch (their networks are ``nn.Module`` subclasses) and import
their config class from here. Keeping the configs apart lets ``pipeline.params`` validate every
``detectors.<name>`` section of params.yaml on load, with the detectors' own rules, without paying for
a torch import: a typo in params.yaml is reported in a fraction of a second, before any work starts.
One file per detector lets ``train@<name>`` in dvc.yaml depend on its own config only, so editing one
detector's config retrains that detector alone.

This package imports nothing itself: ``registry.config_class(name)`` imports the one module asked for.
"""
