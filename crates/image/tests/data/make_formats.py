"""Generate the small format-coverage fixtures in this folder with Pillow 9.3.0 (the reference's Pillow).

Run once, by hand, outside the build (the tests only read what this wrote):

    python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow==9.3.0 "numpy<2"
    cd crates/image/tests/data && /tmp/pil/bin/python make_formats.py

For every image file written into `formats/` it records in `expected.json`, exactly as Pillow 9.3 computes
them:
  - `mode`, `width`, `height`: what `Image.open(f)` reports (after loading the first frame);
  - `rgb`: hex of `Image.open(f).convert("RGB").tobytes()` (what the generation encoder's caller uses);
  - `resize`: [w, h] and `resized_rgb`: hex of `Image.open(f).resize((w, h), Image.BICUBIC).convert("RGB")`,
    i.e. the mode-specific resize that `clip._transform` performs before its own `convert("RGB")`
    (RGBA/LA premultiplied, P and 1 nearest, I in 32-bit).
Nothing in expected.json is computed by the Rust code under test.
"""
import io
import json
import os
import struct
import zlib

import numpy as np
import PIL
from PIL import Image, TiffImagePlugin

assert PIL.__version__ == "9.3.0", PIL.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "formats")
os.makedirs(OUT, exist_ok=True)

W, H = 21, 13  # odd sizes: partial JPEG MCUs, odd chroma, uneven resize
RESIZE = (15, 19)  # down in x, up in y: both passes, both directions
rng = np.random.RandomState(7)


def pattern(w=W, h=H, seed_shift=0):
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[..., 0] = (xx * 255 // (w - 1)).astype(np.uint8)
    a[..., 1] = (yy * 255 // (h - 1)).astype(np.uint8)
    a[..., 2] = ((xx * 7 + yy * 13 + seed_shift) % 256).astype(np.uint8)
    a[3:8, 4:11] = [250, 30, 40]  # a saturated block: strong chroma edges
    a[8:12, 12:19] = [20, 200, 240]
    noise = rng.randint(-20, 21, size=a.shape)
    return np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)


def alpha_plane(w=W, h=H):
    yy, xx = np.mgrid[0:h, 0:w]
    al = ((xx * 255) // (w - 1)).astype(np.uint8)
    al[:, :3] = 0  # fully transparent columns
    al[:, -3:] = 255
    al[0, :] = 128
    return al


def rgb():
    return Image.fromarray(pattern())


def rgba():
    return Image.fromarray(np.dstack([pattern(), alpha_plane()]), "RGBA")


def grey():
    return rgb().convert("L")


def pal(colors=40):
    return rgb().quantize(colors=colors)


made = []


def save(name, im, **kw):
    path = os.path.join(OUT, name)
    im.save(path, **kw)
    made.append(name)


def save_bytes(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    made.append(name)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(w, h, depth, ctype, rows, plte=None, trns=None):
    """A PNG written by hand, for layouts Pillow's encoder never produces."""
    raw = b"".join(b"\x00" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if plte is not None:
        out += png_chunk(b"PLTE", plte)
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    return out + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def pack_bits(values, depth):
    out, acc, n = bytearray(), 0, 0
    for v in values:
        acc = (acc << depth) | v
        n += depth
        if n == 8:
            out.append(acc)
            acc, n = 0, 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


# ---------------------------------------------------------------- JPEG (libjpeg-turbo via Pillow)
save("jpeg_420.jpg", rgb(), quality=90)
save("jpeg_422.jpg", rgb(), quality=90, subsampling=1)
save("jpeg_444.jpg", rgb(), quality=95, subsampling=0)
save("jpeg_420_progressive.jpg", rgb(), quality=75, progressive=True)
save("jpeg_grey.jpg", grey(), quality=90)
save("jpeg_cmyk.jpg", rgb().convert("CMYK"), quality=90)  # Adobe APP14, inverted samples
exif = Image.Exif()
exif[0x0112] = 6  # orientation "rotate 90": Pillow does not apply it, nor may we
save("jpeg_exif_rotated.jpg", rgb(), quality=90, exif=exif.tobytes())
# big enough for several MCU rows and a restart-free multi-row chroma path
save("jpeg_420_big.jpg", Image.fromarray(pattern(70, 53)), quality=85)

# ---------------------------------------------------------------- PNG
save("png_rgb.png", rgb())
save("png_rgba.png", rgba())
save("png_l.png", grey())
save("png_la.png", rgba().convert("LA"))
save("png_p.png", pal())
save("png_p_trns.png", pal(), transparency=3)
save("png_1.png", grey().point(lambda v: 255 if v > 120 else 0).convert("1"))
save("png_i16.png", Image.fromarray((pattern()[..., 0].astype(np.uint16) * 3 + 40)).convert("I"))
p = pattern().astype(np.uint16) * 257 + rng.randint(0, 257, size=(H, W, 3)).astype(np.uint16)
rows16 = [p[y].astype(">u2").tobytes() for y in range(H)]
save_bytes("png_rgb16.png", raw_png(W, H, 16, 2, rows16))
a16 = (alpha_plane().astype(np.uint16) * 257)
rows = [np.dstack([p, a16])[y].astype(">u2").tobytes() for y in range(H)]
save_bytes("png_rgba16.png", raw_png(W, H, 16, 6, rows))
rows = [np.dstack([p[..., 1], a16])[y].astype(">u2").tobytes() for y in range(H)]
save_bytes("png_la16.png", raw_png(W, H, 16, 4, rows))
g = np.asarray(grey())
for depth in (2, 4):
    q = (g.astype(int) * ((1 << depth) - 1) // 255)
    save_bytes(f"png_l{depth}.png", raw_png(W, H, depth, 0, [pack_bits(q[y], depth) for y in range(H)]))
# 4-bit palette with only 5 PLTE entries: indices 5..15 fall back to Pillow's grey ramp
q = (g.astype(int) * 15 // 255)
plte = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0, 10, 20, 30])
save_bytes("png_p4_short_palette.png", raw_png(W, H, 4, 3, [pack_bits(q[y], 4) for y in range(H)], plte=plte))
# RGB with a tRNS colour, and an Adam7-interlaced RGB written by hand
save_bytes("png_rgb_trns.png", raw_png(W, H, 8, 2, [pattern()[y].tobytes() for y in range(H)],
                                       trns=struct.pack(">HHH", 250, 30, 40)))


def adam7_png(arr):
    h, w, _ = arr.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = arr[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        raw += b"".join(b"\x00" + sub[y].tobytes() for y in range(sub.shape[0]))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1))
    return out + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


save_bytes("png_rgb_adam7.png", adam7_png(pattern()))

# ---------------------------------------------------------------- GIF (first frame only)
f1, f2 = pal(), Image.fromarray(255 - pattern()).quantize(colors=40)
save("gif_anim.gif", f1, save_all=True, append_images=[f2], duration=100, loop=0)
save("gif_transparent.gif", pal(), transparency=2)
save("gif_grey.gif", grey(), optimize=False)  # identity grey palette: Pillow opens it as mode L
# a first frame smaller than the logical screen, at an offset: the rest is palette index 0
buf = io.BytesIO()
pal(16).save(buf, "GIF")
gif = bytearray(buf.getvalue())
screen_w, screen_h = W + 6, H + 4
gif[6:10] = struct.pack("<HH", screen_w, screen_h)
i = gif.index(b",")  # image descriptor: left, top
gif[i + 1:i + 5] = struct.pack("<HH", 4, 3)
save_bytes("gif_offset_frame.gif", bytes(gif))

# ---------------------------------------------------------------- WebP (libwebp 1.2.4 as bundled with Pillow 9.3)
save("webp_lossy.webp", rgb(), quality=80)
save("webp_lossless.webp", rgb(), lossless=True)
save("webp_lossy_alpha.webp", rgba(), quality=80)
save("webp_lossless_alpha.webp", rgba(), lossless=True, exact=True)
save("webp_anim.webp", rgb(), save_all=True, append_images=[Image.fromarray(255 - pattern())], lossless=True)

# ---------------------------------------------------------------- BMP
save("bmp_rgb.bmp", rgb())
save("bmp_p.bmp", pal())
save("bmp_l.bmp", grey())
save("bmp_1.bmp", grey().convert("1"))
save("bmp_rgba.bmp", rgba())



def raw_bmp(w, h, bits, pixel_rows, header=40, compression=0, masks=None, palette=None, top_down=False,
            rle=None):
    """A BMP written by hand: `pixel_rows` top row first (bytes, unpadded) or `rle` (encoded stream)."""
    if rle is None:
        stride = ((w * bits + 31) >> 3) & ~3
        rows = [r + b"\x00" * (stride - len(r)) for r in pixel_rows]
        data = b"".join(rows if top_down else rows[::-1])
    else:
        data = rle
    pal = b""
    if palette is not None:
        pal = b"".join(bytes([b, g, r]) + (b"" if header == 12 else b"\x00") for r, g, b in palette)
    extra = b""
    if header == 12:
        dib = struct.pack("<IHHHH", 12, w, h, 1, bits)
    else:
        dib = struct.pack("<IiiHHIIiiII", header, w, -h if top_down else h, 1, bits, compression,
                          len(data), 2835, 2835, len(palette or []), 0)
        if header > 40:
            m = list(masks or (0, 0, 0, 0)) + [0] * 4
            dib += struct.pack("<IIII", *m[:4]) + b"\x00" * (header - 56)
        elif masks is not None:
            extra = struct.pack("<III", *masks[:3])
    offset = 14 + len(dib) + len(extra) + len(pal)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + dib + extra + pal + data


def rle8_encode(rows):
    """RLE8: runs, absolute stretches (odd lengths too, word-aligned), end-of-line, end-of-bitmap."""
    out = bytearray()
    for row in rows[::-1]:  # bottom-up
        i = 0
        while i < len(row):
            j = i
            while j < len(row) and row[j] == row[i] and j - i < 255:
                j += 1
            if j - i >= 3 or len(row) - i < 3:
                out += bytes([j - i, row[i]])
                i = j
            else:
                n = min(5, len(row) - i)
                out += bytes([0, n]) + bytes(row[i:i + n]) + (b"\x00" if n % 2 else b"")
                i += n
        out += b"\x00\x00"
    return bytes(out + b"\x00\x01")


def rle4_encode(rows):
    """RLE4: two-colour alternating runs and even-length absolute stretches."""
    out = bytearray()
    for row in rows[::-1]:
        i = 0
        while i < len(row):
            if len(row) - i >= 4 and i % 3 == 0:
                chunk = row[i:i + 4]
                out += bytes([0, 4, (chunk[0] << 4) | chunk[1], (chunk[2] << 4) | chunk[3]])
                i += 4
            else:
                n = min(3, len(row) - i)
                a, b = row[i], row[i + 1] if n > 1 else 0
                if n == 3 and row[i + 2] != a:
                    n = 2
                out += bytes([n, (a << 4) | b])
                i += n
        out += b"\x00\x00"
    return bytes(out + b"\x00\x01")


px = pattern()
pal16 = [tuple(int(v) for v in c) for c in rng.randint(0, 256, size=(16, 3))]
pal256 = [tuple(int(v) for v in c) for c in rng.randint(0, 256, size=(256, 3))]
idx16 = (np.asarray(grey()).astype(int) * 15 // 255).astype(np.uint8)
idx256 = np.asarray(pal(200))
r5, g5, b5 = (px[..., 0] >> 3).astype(int), (px[..., 1] >> 3).astype(int), (px[..., 2] >> 3).astype(int)
g6 = (px[..., 1] >> 2).astype(int)
save_bytes("bmp_555.bmp", raw_bmp(W, H, 16, [struct.pack(f"<{W}H", *((r5[y] << 10) | (g5[y] << 5) | b5[y]))
                                              for y in range(H)]))
save_bytes("bmp_565_bitfields.bmp", raw_bmp(W, H, 16, [struct.pack(f"<{W}H", *((r5[y] << 11) | (g6[y] << 5) | b5[y]))
                                                        for y in range(H)], compression=3,
                                            masks=(0xF800, 0x7E0, 0x1F)))
bgra = np.dstack([px[..., 2], px[..., 1], px[..., 0], alpha_plane()])
save_bytes("bmp_bgra_v4.bmp", raw_bmp(W, H, 32, [bgra[y].tobytes() for y in range(H)], header=108, compression=3,
                                      masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000)))
save_bytes("bmp_topdown.bmp", raw_bmp(W, H, 24, [px[y][:, ::-1].tobytes() for y in range(H)], top_down=True))
save_bytes("bmp_os2_p8.bmp", raw_bmp(W, H, 8, [idx256[y].tobytes() for y in range(H)], header=12,
                                     palette=pal256))
save_bytes("bmp_p4.bmp", raw_bmp(W, H, 4, [pack_bits(idx16[y], 4) for y in range(H)], palette=pal16))
save_bytes("bmp_rle8.bmp", raw_bmp(W, H, 8, None, compression=1, palette=pal256,
                                   rle=rle8_encode([list(idx256[y]) for y in range(H)])))
save_bytes("bmp_rle4.bmp", raw_bmp(W, H, 4, None, compression=2, palette=pal16,
                                   rle=rle4_encode([list(idx16[y]) for y in range(H)])))

# ---------------------------------------------------------------- GIF, larger: interlaced, local palette
big = Image.fromarray(pattern(33, 17)).quantize(colors=64)  # Pillow interlaces from 16 rows
save("gif_interlaced.gif", big, interlace=True)
buf = io.BytesIO()
big.save(buf, "GIF", interlace=False)
g = bytearray(buf.getvalue())
# move the global colour table into a local one: clear the global flag, set the local flag
flags = g[10]
gsize = 3 << ((flags & 7) + 1)
table = g[13:13 + gsize]
del g[13:13 + gsize]
g[10] = flags & 0x7F
i = g.index(b",", 13)
g[i + 9] = 0x80 | (flags & 7)
g[i + 10:i + 10] = table
save_bytes("gif_local_palette.gif", bytes(g))

# ---------------------------------------------------------------- TIFF
save("tiff_rgb.tif", rgb())
save("tiff_rgb_lzw.tif", rgb(), compression="tiff_lzw")
save("tiff_rgb_deflate.tif", rgb(), compression="tiff_adobe_deflate")
save("tiff_rgba.tif", rgba())
save("tiff_l.tif", grey())
save("tiff_1.tif", grey().convert("1"))
save("tiff_p.tif", pal())
save("tiff_cmyk.tif", rgb().convert("CMYK"))
# Pillow always writes ExtraSamples = 2 (unassociated); patch the IFD entry to 1 (associated alpha)
buf = io.BytesIO()
Image.fromarray(np.dstack([pattern(), alpha_plane()]), "RGBA").save(buf, "TIFF")
entry = struct.pack("<HHIHH", 338, 3, 1, 2, 0)
assert buf.getvalue().count(entry) == 1
save_bytes("tiff_rgba_associated.tif", buf.getvalue().replace(entry, struct.pack("<HHIHH", 338, 3, 1, 1, 0)))
save("tiff_i16.tif", Image.fromarray((pattern()[..., 0].astype(np.uint16) * 3 + 40)).convert("I;16"))

# ---------------------------------------------------------------- expectations
cases = []
for name in made:
    im = Image.open(os.path.join(OUT, name))
    im.load()
    mode, size = im.mode, im.size
    rgb_bytes = im.convert("RGB").tobytes()
    case = {"file": name, "mode": mode, "width": size[0], "height": size[1], "rgb": rgb_bytes.hex()}
    try:
        r = Image.open(os.path.join(OUT, name)).resize(RESIZE, Image.BICUBIC)
        case["resize"] = list(RESIZE)
        case["resized_rgb"] = r.convert("RGB").tobytes().hex()
    except ValueError as e:  # e.g. I;16 cannot be resized by Pillow 9.3
        case["resize_error"] = str(e)
    cases.append(case)
    print(f"{name:32s} {mode:5s} {size}")

with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump({"generator": "make_formats.py", "pillow": PIL.__version__, "cases": cases}, f, indent=1)
