"""TBStar-Edit's layered editing as plain torch: the product lock (exact product pixels, a seam band), the
consistency report (change inside / outside the product mask), the edit-pair folder and the two training stages'
loss weighting. The LoRA layers, their loading and their step windows are the host's (``nodes/host.py``)."""


class LayeredInputError(ValueError):
    """A bad input, named as the node calls it; the node turns it into its EditLabInputError."""

    def __init__(self, input_name: str, expected: str, got=None):
        self.input_name, self.expected, self.got = input_name, expected, got
        super().__init__(f"input '{input_name}': expected {expected}" + (f"; got {got!r}" if got is not None else ""))
