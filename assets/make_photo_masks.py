"""Object masks for the CC0 photos in assets/photos (the Backgrounds tab needs one), made with OpenCV's GrabCut.

    python assets/make_photo_masks.py   # writes assets/photos/masks/chelsea.png (0/255)

The seeds are hand-placed boxes: definite background where the wall shows, definite cat on the face, the rest
left for GrabCut to decide; then a 5x5 opening removes specks.
"""
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
SEEDS = {"chelsea": {"background": [(slice(None), slice(430, None)), (slice(120, None), slice(400, None)),
                                    (slice(None, 40), slice(400, None)), (slice(None, 60), slice(None, 15))],
                     "object": [(slice(60, 260), slice(60, 330))]}}


def grabcut_mask(image: np.ndarray, seeds: dict) -> np.ndarray:
    """(H, W) uint8 0/255 mask of the object in a BGR image, from GrabCut seeded with boxes."""
    mask = np.full(image.shape[:2], cv2.GC_PR_FGD, np.uint8)
    for box in seeds["background"]:
        mask[box] = cv2.GC_BGD
    for box in seeds["object"]:
        mask[box] = cv2.GC_FGD
    cv2.setRNGSeed(0)
    cv2.grabCut(image, mask, None, np.zeros((1, 65)), np.zeros((1, 65)), 10, cv2.GC_INIT_WITH_MASK)
    obj = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.morphologyEx(obj, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)) * 255


if __name__ == "__main__":
    for stem, seeds in SEEDS.items():
        out = HERE / "photos" / "masks" / f"{stem}.png"
        cv2.imwrite(str(out), grabcut_mask(cv2.imread(str(HERE / "photos" / f"{stem}.jpg")), seeds))
        print(out)
