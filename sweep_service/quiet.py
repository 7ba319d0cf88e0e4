"""Keep NNI's and Ray's per-module log lines and warnings out of the user's terminal."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator

_NOISY_LOGGERS = ("nni", "torch.fx", "filelock")


def silence_libraries() -> None:
    """Lower noisy library loggers and warnings for this process."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("nni"):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module=r"(nni|torch\.fx)(\..*)?")


@contextlib.contextmanager
def quiet_nni() -> Iterator[None]:
    """NNI logs an INFO line per replaced module, prints from its speedup code and
    configures its own loggers on import: mute all of that inside the block."""
    silence_libraries()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            silence_libraries()
