"""``[core] hostname_callable`` for the Celery topology test: each worker process reports the name
in ``KPIGUARD_WORKER_NAME``, so task instances show which worker ran them (both run on one host)."""
from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("KPIGUARD_WORKER_NAME") or socket.getfqdn()
