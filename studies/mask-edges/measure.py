"""Where anti-aliased masks and non-masks fall: the measurement behind trainer/decode.py's soft-edge bounds.

For each class of mask-like image: the share of pixels strictly between 30 and 225 of 255 ("grey"), the
width of the grey band (grey pixels per pixel of the binarised mask's outline), and the fewest distinct
values. Kvasir-SEG's masks are read from DATA (default ../shared/data/kvasir-seg from the repository root).

usage: python studies/mask-edges/measure.py [DATA]   (about a minute; prints the table in RESULTS.md)
"""

import glob
import sys

import cv2
import numpy as np

DATA = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/kvasir-seg"
LOW, HIGH = 30, 225
rng = np.random.default_rng(0)


def share(raw):
    if raw.ndim == 3:
        raw = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2GRAY)
    mid = (raw > LOW) & (raw < HIGH)
    n = mid.sum()
    binar = (raw >= 128).astype(np.uint8)
    edge = (cv2.dilate(binar, np.ones((3, 3), np.uint8)) != cv2.erode(binar, np.ones((3, 3), np.uint8))).sum() / 2
    width = n / edge if edge else (float("inf") if n else 0.0)
    return mid.mean(), width, len(np.unique(raw))


rows = {}


def add(name, raw):
    rows.setdefault(name, []).append(share(raw))


kv = sorted(glob.glob(f"{DATA}/masks/*.jpg"))
kvm = []
for p in kv:
    raw = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    add("kvasir-seg JPEG masks (1000)", raw)
    kvm.append((cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY) >= 128).astype(np.uint8) * 255)


def shapes(size, n):
    m = np.zeros((size, size), np.uint8)
    for _ in range(n):
        c = tuple(int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
        ax = tuple(int(v) for v in rng.integers(size // 12, size // 4, 2))
        cv2.ellipse(m, c, ax, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
    return m


def polygon(size):
    m = np.zeros((size, size), np.uint8)
    pts = rng.integers(size // 8, 7 * size // 8, (int(rng.integers(3, 9)), 2)).astype(np.int32)
    cv2.fillPoly(m, [cv2.convexHull(pts)], 255, cv2.LINE_AA)
    return m


for size in (128, 256, 384, 512, 1024):
    for _ in range(40):
        add(f"LINE_AA ellipses/polygons {size}px", shapes(size, int(rng.integers(1, 4))))
        add(f"LINE_AA ellipses/polygons {size}px", polygon(size))
# a CVC-like: 384x288 with one polyp, LINE_AA
for _ in range(200):
    m = np.zeros((288, 384), np.uint8)
    cv2.ellipse(
        m,
        (int(rng.integers(100, 284)), int(rng.integers(90, 200))),
        (int(rng.integers(15, 90)), int(rng.integers(15, 80))),
        float(rng.uniform(0, 180)),
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
    )
    add("LINE_AA one polyp 384x288", m)
for f in (2, 3, 4, 8):
    for m in kvm[:300]:
        h, w = m.shape
        add(f"kvasir binarised, INTER_AREA 1/{f}", cv2.resize(m, (w // f, h // f), interpolation=cv2.INTER_AREA))
for m in kvm[:300]:
    h, w = m.shape
    add("kvasir binarised, INTER_LINEAR to 352x352", cv2.resize(m, (352, 352), interpolation=cv2.INTER_LINEAR))
    add("kvasir binarised, INTER_AREA to 256x256", cv2.resize(m, (256, 256), interpolation=cv2.INTER_AREA))
    add("kvasir binarised, INTER_AREA to 64x64", cv2.resize(m, (64, 64), interpolation=cv2.INTER_AREA))
# refused
for m in kvm[:200]:
    h, w = m.shape
    add("refused: Gaussian-blurred mask sigma 2", cv2.GaussianBlur(m, (0, 0), 2))
    add("refused: Gaussian-blurred mask sigma 5", cv2.GaussianBlur(m, (0, 0), 5))
    add("refused: blurred sigma 10 (soft mask)", cv2.GaussianBlur(m, (0, 0), 10))
    d = cv2.distanceTransform((m > 0).astype(np.uint8), cv2.DIST_L2, 5) - cv2.distanceTransform(
        (m == 0).astype(np.uint8), cv2.DIST_L2, 5
    )
    add("refused: probability map sigmoid(d/3)", (255 / (1 + np.exp(-d / 3))).astype(np.uint8))
    add("refused: probability map sigmoid(d/1.5)", (255 / (1 + np.exp(-d / 1.5))).astype(np.uint8))
for size in (64, 256, 622):
    for _ in range(50):
        a = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / size
        add("refused: linear gradients", (255 * ((np.cos(a) * xx + np.sin(a) * yy) % 1)).astype(np.uint8))
        add("refused: uniform noise", rng.integers(0, 256, (size, size), dtype=np.uint8))
        add(
            "refused: salt-and-pepper 5% on 0/255",
            np.where(rng.random((size, size)) < 0.05, rng.integers(0, 256, (size, size)), shapes(size, 1)).astype(
                np.uint8
            ),
        )
for p in kv[:300]:
    img = cv2.imread(p.replace("/masks/", "/images/"), cv2.IMREAD_COLOR)
    add("refused: photos (kvasir images, grey)", img)
for m in kvm[:200]:
    lab = m.copy()
    lab[m.shape[0] // 2 :, :][lab[m.shape[0] // 2 :, :] > 0] = 128
    add("refused: label map {0,128,255}", lab)


def q(v):
    return f"{min(v):.4%} / {np.median(v):.4%} / {max(v):.4%}"


print(f"{'class':48} {'n':>5}  intermediate share min / median / max        band width px min/med/max   distinct min")
for name, r in rows.items():
    s = [x[0] for x in r]
    off = [x[1] for x in r]
    nv = [x[2] for x in r]
    print(f"{name:48} {len(r):5}  {q(s):44} {min(off):.2f} / {np.median(off):.2f} / {max(off):.2f}   {min(nv)}")
