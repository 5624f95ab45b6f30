"""Names users type for built-in prompt ensembles and bundled pixel prompts (no heavy imports)."""

BUILTIN_PROMPT_TYPES = ("industrial", "medical", "object_agnostic")

# Bundled learned pixel prompts (the TipsOmaly authors' release) → file in resources/.
BUNDLED_PIXEL_PROMPTS = {
    "trained-on-mvtec": "trained_on_mvtec_l14h_epoch2.safetensors",
    "trained-on-visa": "trained_on_visa_l14h_epoch2.safetensors",
}
