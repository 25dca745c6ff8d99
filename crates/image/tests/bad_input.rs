//! Bad input gives a clear error that names the file, never a panic: missing files, unknown
//! formats, corrupt and truncated data, empty images, and headers claiming more than
//! `MAX_PIXELS` (refused from the header, before any pixel data is read).

use std::path::{Path, PathBuf};

use smallcap_image::{decode_rgb, image_size, load_rgb, ImageError, MAX_PIXELS};

const PACK_IMAGES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/smallcap-tiny/images"
);
const FORMATS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/formats");

/// A file in the system temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("smallcap-image-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn read(dir: &str, name: &str) -> Vec<u8> {
    std::fs::read(Path::new(dir).join(name)).unwrap()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG that has only a (valid) IHDR claiming `w`×`h` RGB, then IEND: no pixel data at all.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IEND", b"");
    out
}

/// A BMP v3 header (24-bit) claiming `w`×`h`, with no pixel data.
fn bmp_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&54u32.to_le_bytes()); // file size (ignored)
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 24]);
    out
}

/// A JPEG whose SOF0 claims `w`×`h` and that ends right after it.
fn jpeg_header_only(w: u16, h: u16) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 8];
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    out.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    out
}

/// A GIF with a logical screen of `w`×`h` and nothing else.
fn gif_header_only(w: u16, h: u16) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, b';']);
    out
}

/// A WebP "VP8X" container claiming a `w`×`h` canvas, without image data.
fn webp_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut vp8x = vec![0u8; 10];
    vp8x[4..7].copy_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x[7..10].copy_from_slice(&(h - 1).to_le_bytes()[..3]);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + 8 + 10u32).to_le_bytes());
    out.extend_from_slice(b"WEBPVP8X");
    out.extend_from_slice(&10u32.to_le_bytes());
    out.extend_from_slice(&vp8x);
    out
}

fn assert_names(err: &ImageError, name: &str) {
    let msg = err.to_string();
    assert!(
        msg.contains(name),
        "error message does not name the file: {msg}"
    );
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let path = Path::new("/nonexistent/dir/no-such-image.jpg");
    let err = load_rgb(path).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
    assert_names(&err, "/nonexistent/dir/no-such-image.jpg");
}

#[test]
fn unknown_format_is_refused() {
    for (name, bytes) in [
        ("notes.txt", b"hello, this is not an image".as_slice()),
        ("empty.jpg", b"".as_slice()),
        ("short.png", b"\x89PN".as_slice()),
        ("riff.webp", b"RIFF\x10\x00\x00\x00WAVEfmt ".as_slice()),
    ] {
        let err = decode_rgb(bytes, name).unwrap_err();
        assert!(
            matches!(err, ImageError::UnknownFormat { .. }),
            "{name}: {err:?}"
        );
        assert_names(&err, name);
    }
    let file = TempFile::new("document.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n");
    let err = load_rgb(&file.0).unwrap_err();
    assert!(matches!(err, ImageError::UnknownFormat { .. }), "{err:?}");
    assert_names(&err, "document.pdf");
}

#[test]
fn corrupt_data_is_a_decode_error() {
    // A valid signature followed by garbage, for every format.
    let garbage: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let prefixes: [&[u8]; 6] = [
        b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00",
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a\x10\x00\x10\x00\xF0\x00\x00",
        b"RIFF\x40\x00\x00\x00WEBPVP8 ",
        b"BM",
        b"II\x2a\x00",
    ];
    for (i, prefix) in prefixes.iter().enumerate() {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&garbage);
        let name = format!("corrupt{i}.bin");
        let err = decode_rgb(&bytes, &name).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Decode { .. }
                    | ImageError::Unsupported { .. }
                    | ImageError::TooLarge { .. }
            ),
            "{name}: {err:?}"
        );
        assert_names(&err, &name);
    }

    // A real JPEG whose Huffman table segment is destroyed.
    let mut jpeg = read(PACK_IMAGES, "synth_7_225x224_RGB.jpg");
    let dht = jpeg.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
    for b in &mut jpeg[dht + 4..dht + 24] {
        *b = 0xFF;
    }
    let err = decode_rgb(&jpeg, "bad_huffman.jpg").unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err:?}");
    assert_names(&err, "bad_huffman.jpg");

    // A real PNG with its compressed data scrambled.
    let mut png = read(FORMATS, "png_rgb.png");
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    for b in &mut png[idat + 6..idat + 40] {
        *b ^= 0x5A;
    }
    let err = decode_rgb(&png, "bad_idat.png").unwrap_err();
    assert!(matches!(err, ImageError::Decode { .. }), "{err:?}");
    assert_names(&err, "bad_idat.png");
}

#[test]
fn truncated_png_and_jpeg_files_are_errors() {
    for name in [
        "rocket.jpg",
        "synth_0_640x480_RGB.jpg",
        "chelsea.png",
        "synth_6_333x250_P.png",
    ] {
        let full = read(PACK_IMAGES, name);
        for keep in [full.len() / 2, full.len() * 9 / 10] {
            let file = TempFile::new(&format!("trunc-{keep}-{name}"), &full[..keep]);
            let err = load_rgb(&file.0).unwrap_err();
            assert!(
                matches!(err, ImageError::Decode { .. }),
                "{name} cut at {keep}: {err:?}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
            assert_names(&err, &file.0.display().to_string());
        }
    }
}

#[test]
fn truncated_files_of_other_formats_are_errors() {
    for name in [
        "jpeg_420_progressive.jpg",
        "gif_transparent.gif",
        "webp_lossy.webp",
        "webp_lossless.webp",
        "bmp_rgb.bmp",
        "bmp_p.bmp",
        "tiff_rgb.tif",
        "tiff_rgb_lzw.tif",
    ] {
        let full = read(FORMATS, name);
        let cut = &full[..full.len() * 2 / 3];
        let err = decode_rgb(cut, name).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Decode { .. } | ImageError::Unsupported { .. }
            ),
            "{name}: {err:?}"
        );
        assert_names(&err, name);
    }
}

#[test]
fn zero_sized_images_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero.png", png_header_only(0, 10)),
        ("zero.bmp", bmp_header_only(10, 0)),
        ("zero.gif", gif_header_only(0, 0)),
        ("zero.jpg", jpeg_header_only(16, 0)),
    ];
    for (name, bytes) in cases {
        let err = decode_rgb(&bytes, name).unwrap_err();
        assert!(
            matches!(err, ImageError::ZeroSized { .. }),
            "{name}: {err:?}"
        );
        assert_names(&err, name);
        assert!(matches!(
            image_size(&bytes, name),
            Err(ImageError::ZeroSized { .. })
        ));
    }
}

#[test]
fn oversized_headers_are_refused_before_decoding() {
    // None of these files contains any pixel data: only a header check can produce TooLarge.
    let cases: Vec<(&str, Vec<u8>, u64, u64)> = vec![
        ("huge.png", png_header_only(20_000, 20_000), 20_000, 20_000),
        ("huge.bmp", bmp_header_only(20_000, 20_000), 20_000, 20_000),
        ("huge.jpg", jpeg_header_only(65_000, 65_000), 65_000, 65_000),
        ("huge.gif", gif_header_only(60_000, 2_000), 60_000, 2_000),
        (
            "huge.webp",
            webp_header_only(16_000, 16_000),
            16_000,
            16_000,
        ),
    ];
    for (name, bytes, w, h) in cases {
        assert!(w * h > MAX_PIXELS);
        let start = std::time::Instant::now();
        let err = decode_rgb(&bytes, name).unwrap_err();
        assert!(
            start.elapsed().as_millis() < 500,
            "{name}: took {:?}",
            start.elapsed()
        );
        match &err {
            ImageError::TooLarge {
                width,
                height,
                limit,
                ..
            } => {
                assert_eq!((*width, *height, *limit), (w, h, MAX_PIXELS), "{name}");
            }
            other => panic!("{name}: expected TooLarge, got {other:?}"),
        }
        assert_names(&err, name);
        let file = TempFile::new(name, &bytes);
        assert!(
            matches!(load_rgb(&file.0), Err(ImageError::TooLarge { .. })),
            "{name} from disk"
        );
        assert!(matches!(
            image_size(&bytes, name),
            Err(ImageError::TooLarge { .. })
        ));
    }
    // Exactly at the limit is allowed by the size check (the decode then fails: no pixel data).
    let at_limit = png_header_only(10_000, 10_000);
    assert!(!matches!(
        decode_rgb(&at_limit, "limit.png"),
        Err(ImageError::TooLarge { .. })
    ));
}

#[test]
fn image_size_reads_headers() {
    for (name, w, h) in [
        ("rocket.jpg", 640, 427),
        ("synth_1_480x640_RGB.png", 480, 640),
        ("synth_7_225x224_RGB.jpg", 225, 224),
    ] {
        assert_eq!(
            image_size(&read(PACK_IMAGES, name), name).unwrap(),
            (w, h),
            "{name}"
        );
    }
    for name in [
        "gif_anim.gif",
        "webp_lossy.webp",
        "bmp_p.bmp",
        "tiff_cmyk.tif",
    ] {
        assert_eq!(
            image_size(&read(FORMATS, name), name).unwrap(),
            (21, 13),
            "{name}"
        );
    }
}

#[test]
fn exif_orientation_is_not_applied() {
    // Pillow's Image.open does not rotate: the stored 21x13 raster is returned as is.
    let bytes = read(FORMATS, "jpeg_exif_rotated.jpg");
    let img = decode_rgb(&bytes, "jpeg_exif_rotated.jpg").unwrap();
    assert_eq!(img.dimensions(), (21, 13));
}

/// Sides that differ by more than MAX_ASPECT to 1 are refused from the header (CLIP's resize of
/// the shorter side would blow them up first); exactly MAX_ASPECT to 1 passes the check.
#[test]
fn extreme_aspect_ratios_are_refused_from_the_header() {
    use smallcap_image::MAX_ASPECT;
    let limit = MAX_ASPECT as u32;
    for (w, h) in [(1, limit + 1), (limit + 1, 1), (3, 3 * limit + 1)] {
        let bytes = png_header_only(w, h);
        let err = image_size(&bytes, "thin.png").unwrap_err();
        assert!(
            matches!(err, ImageError::ExtremeAspect { width, height, limit: l, .. }
                if (width, height, l) == (u64::from(w), u64::from(h), MAX_ASPECT)),
            "{w}x{h}: {err:?}"
        );
        assert_names(&err, "thin.png");
        assert!(matches!(
            decode_rgb(&bytes, "thin.png"),
            Err(ImageError::ExtremeAspect { .. })
        ));
    }
    for (w, h) in [(1, limit), (limit, 1), (3, 3 * limit)] {
        assert_eq!(
            image_size(&png_header_only(w, h), "ok.png").unwrap(),
            (w, h)
        );
    }
}
