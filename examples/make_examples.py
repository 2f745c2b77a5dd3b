"""Make the sample PDFs in this folder (run once; the PDFs are committed).

    python examples/make_examples.py

Three small documents drawn with Pillow and saved as PDF: no fonts or
network needed, deterministic output.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
DOCS = {
    "annual-report.pdf": [
        ["Annual Report 2025", "", "Quarterly revenue", "Q1  4.2 M", "Q2  4.8 M", "Q3  5.1 M", "Q4  6.0 M",
         "", "Revenue grew 18% over the year."],
        ["Costs and margins", "", "Staff        2.1 M", "Hardware     0.9 M", "Cloud        0.4 M",
         "", "Operating margin rose to 21%."],
        ["Outlook", "", "We expect growth in the vision search market", "and a new office in Lyon."],
    ],
    "rental-contract.pdf": [
        ["Rental Contract", "", "Landlord: A. Martin", "Tenant: J. Okafor", "Monthly rent: 950 EUR",
         "Deposit: two months of rent"],
        ["Termination", "", "Either party may end this contract", "with three months notice in writing."],
    ],
    "recipe-card.pdf": [
        ["Lemon Tart", "", "Ingredients: flour, butter, sugar,", "eggs, lemons, cream.", "",
         "Bake the crust at 180 C for 15 minutes,", "fill, then bake 20 minutes more."],
    ],
}


def page(lines: list[str]) -> Image.Image:
    """One letter-sized page at 72 dpi with the given lines of text."""
    img = Image.new("RGB", (612, 792), "white")
    draw = ImageDraw.Draw(img)
    for n, line in enumerate(lines):
        draw.text((60, 60 + 28 * n), line, fill="black", font_size=20 if n == 0 else 14)
    draw.rectangle((40, 40, 572, 752), outline="gray")
    return img


def main() -> None:
    for name, pages in DOCS.items():
        images = [page(lines) for lines in pages]
        images[0].save(HERE / name, save_all=True, append_images=images[1:], resolution=72.0)
        print(f"wrote {name} ({len(images)} pages)")


if __name__ == "__main__":
    main()
