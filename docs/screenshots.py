"""Screenshots of the demo's report for the docs (docs/images/*.png), taken with Debian's headless Chromium.

    policyshift demo --quick --out demo_out            # once (1–5 minutes on a CPU)
    python docs/screenshots.py demo_out                 # → docs/images/report-*.png

CI does not run this (the images are committed): rerun it when the report's look changes. Each image is the
report with every other section hidden (a style added to a copy of the page), rendered by
`chromium --headless --screenshot`, then cropped to its content and reduced to a 64-colour palette (Pillow,
when installed) so the PNGs stay small. Needs `apt-get install -y chromium`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# image name → (run of the demo, the one section shown (CSS selector; "header" = the report's header), window height)
SHOTS = {
    "report-top": ("ppo_overoptimized", "header, #panel-6", 900),
    "panel-kl": ("ppo_overoptimized", "#panel-1", 560),
    "panel-reward": ("ppo_overoptimized", "#panel-2", 560),
    "panel-distribution": ("ppo_overoptimized", "#panel-3", 900),
    "panel-gao": ("ppo_overoptimized", "#panel-4", 620),
    "panel-shape": ("ppo_overoptimized", "#panel-5", 900),
    "panel-findings": ("ppo_overoptimized", "#panel-6", 700),
    "panel-samples": ("ppo_overoptimized", "#panel-7", 900),
    "panel-phrases": ("ppo_overoptimized", "#panel-11", 900),
    "healthy-kl": ("ppo_healthy", "#panel-1", 560),
    "healthy-reward": ("ppo_healthy", "#panel-2", 560),
}
WIDTH = 1100
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--virtual-time-budget=8000"]


def only(selector: str) -> str:
    """A style that hides the report's header and panels but `selector` (comma-separated). Only those: plotly
    measures legend text in a helper element it appends to <body>, which must stay rendered."""
    shown = ", ".join(f"body > {s.strip()}" for s in selector.split(","))
    return (f"<style>body > header, body > section {{display: none !important}} {shown} {{display: block !important}} "
            f"nav {{display: none !important}}</style>")


def shoot(chromium: str, page: Path, out: Path, height: int, profile: Path) -> None:
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}",
                    f"--screenshot={out}", page.as_uri()], check=True, capture_output=True, timeout=120)


def shrink(path: Path) -> None:
    """Crop the blank rows below the content and store a 64-colour palette PNG."""
    try:
        from PIL import Image, ImageChops
    except ImportError:
        return
    image = Image.open(path).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    if box:
        image = image.crop((0, 0, image.width, min(image.height, box[3] + 16)))
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_out", help="the output directory of `policyshift demo`")
    parser.add_argument("--out", default=str(Path(__file__).parent / "images"), help="where the PNGs go (default docs/images)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (run, selector, height) in SHOTS.items():
            report = Path(args.demo_out) / run / "report.html"
            text = report.read_text(encoding="utf-8")
            page = tmp / f"{name}.html"
            page.write_text(text.replace("</head>", only(selector) + "</head>", 1), encoding="utf-8")
            target = out / f"{name}.png"
            shoot(args.chromium, page, target, height, tmp / "profile")
            shrink(target)
            print(f"{target} ({target.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
