"""Fleet simulator grounded in battery physics, with ground truth for scoring."""

__all__: list[str] = []
