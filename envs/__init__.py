"""Environments: state-based benchmark tasks, visual pick-and-place, and robot interfaces."""
