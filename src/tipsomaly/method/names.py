"""Names users type for built-in prompt ensembles and bundled pixel prompts (no heavy imports)."""

BUILTIN_PROMPT_TYPES = ("industrial", "medical", "object_agnostic")

# Bundled learned pixel prompts (the TipsOmaly authors' release) → file in resources/.
BUNDLED_PIXEL_PROMPTS = {
    "trained-on-mvtec": "trained_on_mvtec_l14h_epoch2.safetensors",
    "trained-on-visa": "trained_on_visa_l14h_epoch2.safetensors",
}

# Few-shot profiles (``tipsomaly fit``): plain constants, so that the profile record and the
# settings can both read them without importing each other.
#: how an image is scored when normal references are known
MODES = ("zero-shot", "few-shot", "fused")
#: the mode a profile is used in unless told otherwise
DEFAULT_MODE = "fused"
DEFAULT_FALSE_ALARM_RATE = 0.01
DEFAULT_PIXEL_FALSE_ALARM_RATE = 0.001
#: patch-bank entries kept before the coreset starts: 7 references at 518 px (1,369 patches
#: each) fit; with more, the search of one 518-px image against the bank stays under 10 % of a
#: B/14 forward (benchmarks/fewshot.py; the full 16-shot bank of 21,904 costs ~17 %)
DEFAULT_MAX_BANK = 10240
