"""Imported by Ray into every worker process as the process starts, before it takes work.

Ray's `preload_python_modules` setting names this module (sweep_service.ray_settings).
The imports every trial needs (torch, torchvision, NNI: 2.4 s of CPU per process here)
then run while Ray is still coming up, instead of at the start of each worker's first
trial, with the garbage collector off (sweep_service.startup). Ray's own import comes
before this module and runs with it on.
"""
from sweep_service.startup import imports_outside_gc

with imports_outside_gc():
    from sweep_service.trial import prepare_process

    prepare_process()
