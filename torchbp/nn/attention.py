"""Twins of torch.nn's modules of this family (to be filled in)."""
TWINS = {}
__all__ = []
