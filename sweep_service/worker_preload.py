"""Imported by Ray into every worker process as the process starts, before it takes work.

Ray's `preload_python_modules` setting names this module (sweep_service.ray_settings).
The imports every trial needs (torch, torchvision, NNI: 4-5 s of CPU per process here)
then run while Ray is still coming up, instead of at the start of each worker's first
trial.
"""
from sweep_service.trial import prepare_process

prepare_process()
