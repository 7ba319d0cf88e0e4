"""The coordinator's side: the config, the grid of trials, the scheduler, the results store and
the Ray cluster the trials are dispatched to."""
