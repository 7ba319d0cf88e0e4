from sweep_service.plugins import PrunerPlugin


class Raises(PrunerPlugin):
    name = "raises"
    description = "Test fixture: masks() raises"

    def masks(self, model, rate, layers, data):
        raise RuntimeError("importance scores diverged")
