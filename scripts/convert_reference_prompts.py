"""Convert the TipsOmaly authors' learned prompts (.pth) into the safetensors files we ship.

Usage: python scripts/convert_reference_prompts.py [../shared/reference-prompts]
Reads the pickles without executing anything from them (tipsomaly.method.torch_pickle).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tipsomaly.method.pixel_prompts import BUNDLED, PixelPrompts, bundled_path

TRAINED_ON = {
    "trained-on-mvtec": ("trained_on_mvtec_l14h_epoch2.pth", "MVTec AD (test split, all classes)"),
    "trained-on-visa": ("trained_on_visa_l14h_epoch2.pth", "VisA (test split, all classes)"),
}


def main(source_dir: Path) -> None:
    for name, (pth, trained_on) in TRAINED_ON.items():
        prompts = PixelPrompts.from_reference_pth(
            source_dir / pth,
            backbone="tips-v1-l14-highres",
            prompt_type="industrial",
            prompt_learn_method="concat",
            trained_on=trained_on,
            epochs=2,
            image_size=518,
            seed=111,
            origin="TipsOmaly authors' release",
            license="MIT, Copyright (c) 2026 Alireza Salehi et al.; see LICENSE in this folder",
        )
        out = prompts.save(bundled_path(name))
        out.chmod(0o644)
        print(f"{source_dir / pth} -> {out}")
    assert set(TRAINED_ON) == set(BUNDLED)
    shutil.copyfile(source_dir / "LICENSE", bundled_path("trained-on-mvtec").parent / "LICENSE")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1].parent / "shared" / "reference-prompts"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
