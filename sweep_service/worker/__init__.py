"""The worker's side: one trial from its spec to its result (data, model, pruning, training,
evaluation, measurement). Imports nothing of the coordinator's side."""
