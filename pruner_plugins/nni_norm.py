"""NNI's magnitude and geometric-median filter pruners, as plugins like any other."""
from sweep_service.nni_adapter import NNIPruner


class L1Norm(NNIPruner):
    name = "l1norm"
    description = "NNI L1NormPruner: removes the output filters with the smallest L1 norm"
    nni_pruner = "L1NormPruner"


class L2Norm(NNIPruner):
    name = "l2norm"
    description = "NNI L2NormPruner: removes the output filters with the smallest L2 norm"
    nni_pruner = "L2NormPruner"


class FPGM(NNIPruner):
    name = "fpgm"
    description = "NNI FPGMPruner: removes the filters nearest the layer's geometric median"
    nni_pruner = "FPGMPruner"
