"""matplotlib for figures written to files (no display needed)."""


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib  # lazy: 0.2 s, and choosing the backend must not happen on import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
