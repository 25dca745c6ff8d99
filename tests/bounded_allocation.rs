//! Bounded allocation for refused inputs: every parser of untrusted files is given the inputs of
//! past fuzz findings (`fuzz/regressions/`) and mutants of them and of valid files (made by the
//! reference tools: `fuzz/seeds/`) in which sizes are made absurd (a 4-
//! or 8-byte field overwritten with 2^31 - 1, 2^32 - 1, 2^40, 2^63, ..., a number in a JSON text
//! made 10^12, a pickle's small int made 2^31 - 1), or which are truncated or have bytes
//! flipped. For each mutant the parser
//! refuses, the most memory the process held during the call, beyond what it held before, must
//! stay within [`FACTOR`] times the input's size plus [`SLACK`] (buffers, tables and thread
//! pools of any size). A size read from a file and allocated before it is checked against the
//! file breaks this at once.
//!
//! Images are the one exception by design, as in Pillow's decompression-bomb check and image-rs's
//! limits: a compressed image's dimensions cannot be checked against its length (a lossless WebP
//! or an RLE bitmap of any size can be a few dozen bytes), so a decoder may allocate the pixels
//! its header announces once they are within the pixel limit (`MAX_PIXELS`, lowered by `serve
//! --max-image-pixels`, checked from the header before any pixel buffer exists). For images the
//! bound therefore adds [`BYTES_PER_PIXEL`] per announced pixel.
//!
//! Memory is counted by a global allocator that tracks the bytes in use and their peak (this
//! test binary holds one test, so nothing else allocates meanwhile); the C decoder of JPEG
//! (libjpeg-turbo) allocates outside it. The fuzz targets' own checks are reused
//! (`fuzz/src/lib.rs`), so each mutant also must not panic and its error must name its file.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Allowed peak as a multiple of the input's size.
const FACTOR: usize = 8;
/// Allowed peak on top of that.
const SLACK: usize = 2 << 20;
/// What a decoder may allocate per pixel its header announces (the decoded image and one
/// working copy, up to 4 bytes each).
const BYTES_PER_PIXEL: usize = 8;
/// Mutants per seed file.
const MUTANTS: usize = 60;

struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the same arguments; the counters
// are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller of `alloc` guarantees for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller of `alloc_zeroed` guarantees for `layout`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller of `realloc` guarantees; `ptr` came from `System`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

fn grow(bytes: usize) {
    let now = IN_USE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// SplitMix64, for reproducible mutants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const HUGE: [u64; 7] = [
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    0x4000_0000,
    1 << 40,
    1 << 62,
    u64::MAX,
    0xFFFF,
];

/// One mutant of `seed`: absurd binary sizes, absurd JSON numbers, truncation or flipped bytes.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut m = seed.to_vec();
    match rng.below(5) {
        4 => {
            // A pickle's one-byte int (BININT1 `K n`: a shape, stride or offset) made a huge
            // four-byte one (BININT `J`).
            let ints: Vec<usize> = (0..m.len().saturating_sub(1))
                .filter(|&i| m[i] == b'K')
                .collect();
            if !ints.is_empty() {
                let at = ints[rng.below(ints.len())];
                let v = [0x7FFF_FFFFu32, 0x4000_0000, 0x0100_0000][rng.below(3)];
                let mut wide = vec![b'J'];
                wide.extend_from_slice(&v.to_le_bytes());
                m.splice(at..at + 2, wide);
            }
        }
        0 if m.len() >= 8 => {
            let v = HUGE[rng.below(HUGE.len())];
            let at = rng.below(m.len() - 7);
            if rng.below(2) == 0 {
                m[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
            } else {
                m[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        1 => {
            // A run of digits (a number in JSON text, a size in a header line) made 10^12.
            let digits: Vec<usize> = (0..m.len()).filter(|&i| m[i].is_ascii_digit()).collect();
            if !digits.is_empty() {
                let at = digits[rng.below(digits.len())];
                let end = (at..m.len())
                    .find(|&i| !m[i].is_ascii_digit())
                    .unwrap_or(m.len());
                m.splice(at..end, *b"1000000000000");
            }
        }
        2 => m.truncate(rng.below(m.len())),
        _ => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(m.len());
                m[at] ^= 1 << rng.below(8);
            }
        }
    }
    m
}

#[test]
fn refused_inputs_hold_memory_within_a_small_multiple_of_their_size() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    // Errors with a captured backtrace (candle's, under RUST_BACKTRACE=1) would count the
    // symbolizer's tables; library backtraces are off here, panics keep theirs.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let mut rng = Rng(20261207);
    let mut report = Vec::new();
    let mut over = Vec::new();
    for (target, check) in checks::TARGETS {
        // The server is fuzzed for 500s; its memory per request is bounded by its body limit.
        if target == "http" {
            continue;
        }
        let mut refused = 0;
        let mut worst = 0;
        // The seeds, and the inputs of past findings (`fuzz/regressions/`), each as it is too.
        let mut files: Vec<_> = ["seeds", "regressions"]
            .iter()
            .filter_map(|kind| std::fs::read_dir(fuzz.join(kind).join(target)).ok())
            .flatten()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let seed = std::fs::read(&file).unwrap();
            for i in 0..=MUTANTS {
                // Mutant 0 is the file itself.
                let input = if i == 0 {
                    seed.clone()
                } else {
                    mutate(&seed, &mut rng)
                };
                let before = IN_USE.load(Ordering::Relaxed);
                PEAK.store(before, Ordering::Relaxed);
                let accepted = check(&input);
                let held = PEAK.load(Ordering::Relaxed).saturating_sub(before);
                if accepted {
                    continue;
                }
                refused += 1;
                worst = worst.max(held);
                let pixels = if target == "image" {
                    smallcap_image::image_size(&input, "mutant")
                        .map_or(0, |(w, h)| w as usize * h as usize)
                } else {
                    0
                };
                if held > FACTOR * input.len() + SLACK + BYTES_PER_PIXEL * pixels {
                    std::fs::write(format!("/tmp/mutant-{target}-{i}"), &input).unwrap();
                    over.push(format!(
                        "{} mutant {i}: {held} bytes for a {}-byte input",
                        file.display(),
                        input.len()
                    ));
                }
            }
        }
        report.push(format!(
            "{target}: {refused} refused mutants, at most {worst} bytes held"
        ));
        assert!(refused > 0, "{target}: no mutant was refused");
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        over.is_empty(),
        "refused inputs that held more than {FACTOR} × their size + {SLACK} bytes:\n{}",
        over.join("\n")
    );
}
