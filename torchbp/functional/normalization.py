"""δ Functions of this family (to be filled in)."""
ROUTES = {}
__all__ = []
