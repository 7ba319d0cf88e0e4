from sweep_service.nni_adapter import NNIPruner


class Level(NNIPruner):
    name = "unstructured"
    description = "Test fixture: NNI LevelPruner, whose single-weight masks speedup neither removes nor applies"
    nni_pruner = "LevelPruner"
