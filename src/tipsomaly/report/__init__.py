"""Outputs for people: heat-map overlays, masks, raw maps and score tables."""

from .overlay import colorize, jet, overlay, save_map, save_mask, save_overlay
from .tables import ScoreTable

__all__ = ["ScoreTable", "colorize", "jet", "overlay", "save_map", "save_mask", "save_overlay"]
