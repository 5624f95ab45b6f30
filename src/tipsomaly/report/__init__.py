"""Outputs for people: heat-map overlays, masks, raw maps and score tables."""
