//! METEOR's paraphrase table (`ParaphraseTransducer`) and where it is kept between runs.
//!
//! `data/paraphrase-en.gz` holds 5.3 million entries of three lines each: a probability (which
//! METEOR ignores), a reference phrase and its paraphrase. The jar loads all of them into a trie
//! keyed by the reference phrase's words; for a sentence position it lists, for each phrase of
//! the trie starting there (shortest first), that phrase's paraphrases in file order.
//!
//! Here the table is read once into a compact image ([`TableImage`]: the table's vocabulary
//! and its entries as word numbers), which is cached on disk (a versioned, fingerprinted
//! binary file written atomically) so that later runs skip the 272 MB decompression. For an
//! evaluation only the entries that can match are kept ([`TableImage::select`]): those whose
//! phrase and paraphrase both occur in the evaluated sentences. That selection is exact: an
//! entry whose phrase occurs nowhere is never reached, and one whose paraphrase occurs nowhere
//! never matches; the kept entries keep their file order, which decides the aligner's ties.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::java;

/// A small, fast hasher for word numbers and short strings (FxHash).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ (rest.len() as u64) << 59);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
type FxSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// The hash of a phrase given as word numbers.
fn phrase_hash(words: impl Iterator<Item = u32>) -> u64 {
    let mut h = FxHasher(0x9e37_79b9_7f4a_7c15);
    let mut n = 0u64;
    for w in words {
        h.add(u64::from(w));
        n += 1;
    }
    h.add(n);
    h.0
}

const MAGIC: &[u8; 8] = b"SCMETPT1";
const HEADER_LEN: usize = 8 + 24 + 4 + 4 + 4 + 8 + 8;
/// Marks a table word absent from the evaluated sentences.
const ABSENT: u32 = u32::MAX;

/// What identifies the source file: its length, modification time and gzip trailer (the CRC-32
/// and length of the decompressed data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    mtime_ns: u64,
    trailer: u64,
}

impl Fingerprint {
    /// The fingerprint of the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Fingerprint> {
        let mut f = std::fs::File::open(path)?;
        let meta = f.metadata()?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        let mut trailer = [0u8; 8];
        if meta.len() >= 8 {
            f.seek(SeekFrom::End(-8))?;
            f.read_exact(&mut trailer)?;
        }
        Ok(Fingerprint {
            len: meta.len(),
            mtime_ns,
            trailer: u64::from_le_bytes(trailer),
        })
    }
}

/// The whole table: its vocabulary and its entries as word numbers, in file order.
pub struct TableImage {
    words: Vec<String>,
    /// Per entry: the lengths of its phrase and of its paraphrase.
    lens: Vec<[u8; 2]>,
    /// The entries' phrase then paraphrase word numbers, concatenated.
    ids: Ids,
}

/// Word numbers, in 16 bits when the vocabulary allows (it does for the English table: half the
/// memory and cache size).
#[derive(Debug, PartialEq, Eq)]
enum Ids {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

impl Ids {
    fn new(ids: Vec<u32>, n_words: usize) -> Ids {
        if n_words <= usize::from(u16::MAX) + 1 {
            Ids::Narrow(ids.into_iter().map(|i| i as u16).collect())
        } else {
            Ids::Wide(ids)
        }
    }

    fn len(&self) -> usize {
        match self {
            Ids::Narrow(v) => v.len(),
            Ids::Wide(v) => v.len(),
        }
    }
}

/// Why the table could not be read (the caller names the file).
pub type TableError = String;

impl TableImage {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Reads the gzip-compressed table (decompression and parsing run on two threads).
    pub fn from_gz(path: &Path) -> Result<TableImage, TableError> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
        let reader = std::thread::spawn(move || {
            let mut gz = BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file)),
            );
            let mut carry: Vec<u8> = Vec::new();
            loop {
                let mut chunk = std::mem::take(&mut carry);
                chunk.reserve(4 << 20);
                let start = chunk.len();
                chunk.resize(start + (4 << 20), 0);
                let mut filled = start;
                let mut eof = false;
                while filled < chunk.len() {
                    match gz.read(&mut chunk[filled..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                chunk.truncate(filled);
                if !eof {
                    // Keep the partial last line for the next chunk.
                    let cut = chunk
                        .iter()
                        .rposition(|&b| b == b'\n' || b == b'\r')
                        .map_or(0, |p| p + 1);
                    carry = chunk.split_off(cut);
                }
                if tx.send(Ok(chunk)).is_err() || eof {
                    return;
                }
            }
        });
        let mut builder = Builder::default();
        let mut result = Ok(());
        for chunk in rx {
            match chunk {
                Ok(c) => builder.feed(&c),
                Err(e) => {
                    result = Err(format!("decompression failed: {e}"));
                    break;
                }
            }
        }
        let _ = reader.join();
        result?;
        builder.finish()
    }

    /// The cache file's bytes for this table from a source with fingerprint `fp`.
    fn to_bytes(&self, fp: Fingerprint) -> Vec<u8> {
        let width: u32 = match self.ids {
            Ids::Narrow(_) => 2,
            Ids::Wide(_) => 4,
        };
        let words_len: usize = self.words.iter().map(|w| 2 + w.len()).sum();
        let mut out = Vec::with_capacity(
            HEADER_LEN + words_len + 2 * self.lens.len() + width as usize * self.ids.len(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&fp.len.to_le_bytes());
        out.extend_from_slice(&fp.mtime_ns.to_le_bytes());
        out.extend_from_slice(&fp.trailer.to_le_bytes());
        out.extend_from_slice(&width.to_le_bytes());
        out.extend_from_slice(&(self.words.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.lens.len() as u32).to_le_bytes());
        out.extend_from_slice(&(words_len as u64).to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        for w in &self.words {
            out.extend_from_slice(&(w.len() as u16).to_le_bytes());
            out.extend_from_slice(w.as_bytes());
        }
        for l in &self.lens {
            out.extend_from_slice(l);
        }
        match &self.ids {
            Ids::Narrow(v) => v
                .iter()
                .for_each(|id| out.extend_from_slice(&id.to_le_bytes())),
            Ids::Wide(v) => v
                .iter()
                .for_each(|id| out.extend_from_slice(&id.to_le_bytes())),
        }
        out
    }

    /// Parses a cache file's bytes; `None` unless it is a complete, consistent image of a
    /// source with fingerprint `fp`.
    fn from_bytes(bytes: &[u8], fp: Fingerprint) -> Option<TableImage> {
        let mut r = ByteReader { bytes, pos: 0 };
        if r.take(8)? != MAGIC {
            return None;
        }
        let stored = Fingerprint {
            len: r.u64()?,
            mtime_ns: r.u64()?,
            trailer: r.u64()?,
        };
        if stored != fp {
            return None;
        }
        let width = r.u32()?;
        let n_words = r.u32()? as usize;
        let n_entries = r.u32()? as usize;
        let words_len = usize::try_from(r.u64()?).ok()?;
        let n_ids = usize::try_from(r.u64()?).ok()?;
        if !(width == 2 || width == 4) {
            return None;
        }
        let expected = HEADER_LEN
            .checked_add(words_len)?
            .checked_add(n_entries.checked_mul(2)?)?
            .checked_add(n_ids.checked_mul(width as usize)?)?;
        if expected != bytes.len() {
            return None;
        }
        let mut words = Vec::with_capacity(n_words);
        for _ in 0..n_words {
            let n = usize::from(r.u16()?);
            words.push(std::str::from_utf8(r.take(n)?).ok()?.to_owned());
        }
        let lens: Vec<[u8; 2]> = r
            .take(2 * n_entries)?
            .chunks_exact(2)
            .map(|c| [c[0], c[1]])
            .collect();
        let total: usize = lens
            .iter()
            .map(|l| usize::from(l[0]) + usize::from(l[1]))
            .sum();
        if total != n_ids {
            return None;
        }
        let raw = r.take(n_ids * width as usize)?;
        let ids = if width == 2 {
            let v: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            if v.iter().any(|&i| usize::from(i) >= n_words) {
                return None;
            }
            Ids::Narrow(v)
        } else {
            let v: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if v.iter().any(|&i| i as usize >= n_words) {
                return None;
            }
            Ids::Wide(v)
        };
        Some(TableImage { words, lens, ids })
    }

    /// The entries that can match within `sentences` (word numbers of `vocab`), as the trie the
    /// aligner walks. `vocab` maps every word of `sentences` to its number.
    pub fn select(&self, vocab: &FxMap<&str, u32>, sentences: &[&[u32]]) -> Paraphrases {
        let local: Vec<u32> = self
            .words
            .iter()
            .map(|w| vocab.get(w.as_str()).copied().unwrap_or(ABSENT))
            .collect();
        let max_len = self
            .lens
            .iter()
            .map(|l| usize::from(l[0].max(l[1])))
            .max()
            .unwrap_or(0);
        let mut phrases: FxSet<u64> = FxSet::default();
        for s in sentences {
            for start in 0..s.len() {
                let end = s.len().min(start + max_len);
                for stop in start + 1..=end {
                    phrases.insert(phrase_hash(s[start..stop].iter().copied()));
                }
            }
        }
        match &self.ids {
            Ids::Narrow(v) => self.select_from(v, &local, &phrases),
            Ids::Wide(v) => self.select_from(v, &local, &phrases),
        }
    }

    fn select_from<T: Copy + Into<u32>>(
        &self,
        ids: &[T],
        local: &[u32],
        phrases: &FxSet<u64>,
    ) -> Paraphrases {
        let mut out = Paraphrases::default();
        let mut pos = 0usize;
        let mut buf: Vec<u32> = Vec::new();
        for l in &self.lens {
            let (a, b) = (usize::from(l[0]), usize::from(l[1]));
            let entry = &ids[pos..pos + a + b];
            pos += a + b;
            buf.clear();
            buf.extend(entry.iter().map(|&w| local[w.into() as usize]));
            if buf.contains(&ABSENT) {
                continue;
            }
            let (phrase, para) = buf.split_at(a);
            if !phrases.contains(&phrase_hash(phrase.iter().copied()))
                || !phrases.contains(&phrase_hash(para.iter().copied()))
            {
                continue;
            }
            out.add(phrase, para);
        }
        out
    }
}

struct ByteReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

/// Builds a [`TableImage`] from the table's lines.
#[derive(Default)]
struct Builder {
    vocab: FxMap<String, u32>,
    words: Vec<String>,
    lens: Vec<[u8; 2]>,
    ids: Vec<u32>,
    /// Which line of an entry comes next: 0 probability, 1 phrase, 2 paraphrase.
    state: u8,
    phrase_len: u8,
    error: Option<String>,
    /// Whether the previous chunk ended with `\r` (a following `\n` ends no line).
    after_cr: bool,
}

impl Builder {
    fn feed(&mut self, chunk: &[u8]) {
        // Java's readLine: a line ends at "\n", "\r" or "\r\n".
        let mut start = 0;
        let mut i = 0;
        if self.after_cr && chunk.first() == Some(&b'\n') {
            start = 1;
            i = 1;
        }
        self.after_cr = false;
        while i < chunk.len() {
            let b = chunk[i];
            if b == b'\n' || b == b'\r' {
                self.line(&chunk[start..i]);
                if b == b'\r' {
                    if chunk.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    } else if i + 1 == chunk.len() {
                        self.after_cr = true;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        if start < chunk.len() {
            // The file's last line has no line break.
            self.line(&chunk[start..]);
        }
    }

    fn line(&mut self, raw: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let state = self.state;
        self.state = (state + 1) % 3;
        if state == 0 {
            return;
        }
        let text = String::from_utf8_lossy(raw);
        let before = self.ids.len();
        for tok in java::tokens(&text) {
            let id = match self.vocab.get(tok) {
                Some(&id) => id,
                None => {
                    let id = self.words.len() as u32;
                    self.vocab.insert(tok.to_owned(), id);
                    self.words.push(tok.to_owned());
                    id
                }
            };
            self.ids.push(id);
        }
        let Ok(n) = u8::try_from(self.ids.len() - before) else {
            self.error = Some(format!(
                "entry {} has a phrase of more than 255 words",
                self.lens.len() + 1
            ));
            return;
        };
        if state == 1 {
            self.phrase_len = n;
        } else {
            self.lens.push([self.phrase_len, n]);
        }
    }

    fn finish(self) -> Result<TableImage, TableError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.state != 0 {
            return Err("the file ends in the middle of an entry (truncated?)".into());
        }
        if self.lens.is_empty() {
            return Err("the table has no entries".into());
        }
        if self.words.iter().any(|w| w.len() > usize::from(u16::MAX)) {
            return Err("the table has a word longer than 65535 bytes".into());
        }
        let ids = Ids::new(self.ids, self.words.len());
        Ok(TableImage {
            words: self.words,
            lens: self.lens,
            ids,
        })
    }
}

/// The cache file for a table, in `cache_dir`.
pub fn cache_file(cache_dir: &Path) -> PathBuf {
    cache_dir.join("meteor-paraphrase-en.v1.bin")
}

/// Loads the table at `gz`: from the cache in `cache_dir` when it holds a valid image of this
/// very file, else from `gz` (then the cache is rewritten; a cache that cannot be written is
/// skipped). `Err` says what went wrong with `gz`.
pub fn load(gz: &Path, cache_dir: Option<&Path>) -> Result<TableImage, TableError> {
    let fp = Fingerprint::of(gz).map_err(|e| e.to_string())?;
    let cache = cache_dir.map(cache_file);
    if let Some(c) = &cache {
        if let Ok(bytes) = std::fs::read(c) {
            if let Some(img) = TableImage::from_bytes(&bytes, fp) {
                return Ok(img);
            }
        }
    }
    let img = TableImage::from_gz(gz)?;
    if let Some(c) = &cache {
        // The cache folder is made if missing; a cache that cannot be written is skipped.
        let _ = std::fs::create_dir_all(c.parent().unwrap_or(Path::new(".")))
            .and_then(|()| smallcap_util::fs::write_atomic(c, &img.to_bytes(fp)));
    }
    Ok(img)
}

/// The selected entries as the jar's trie: phrase word numbers lead from the root to nodes,
/// each node lists (in file order) the paraphrases of the phrase that ends there.
#[derive(Default)]
pub struct Paraphrases {
    /// `(node, word)` to child node; node 0 is the root.
    children: FxMap<(u32, u32), u32>,
    /// Per node, the indices of its paraphrases in `paraphrases`.
    emits: Vec<Vec<u32>>,
    paraphrases: Vec<Box<[u32]>>,
}

impl Paraphrases {
    fn add(&mut self, phrase: &[u32], para: &[u32]) {
        if self.emits.is_empty() {
            self.emits.push(Vec::new());
        }
        let mut node = 0u32;
        for &w in phrase {
            let next = self.emits.len() as u32;
            node = *self.children.entry((node, w)).or_insert(next);
            if node == next {
                self.emits.push(Vec::new());
            }
        }
        self.emits[node as usize].push(self.paraphrases.len() as u32);
        self.paraphrases.push(para.into());
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.paraphrases.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.paraphrases.is_empty()
    }

    /// `getReferencePaths(words, start)`: for each phrase of the table that `words[start..]`
    /// begins with, shortest first, `(phrase length, paraphrase)` per paraphrase in file order.
    pub fn paths<'a>(&'a self, words: &[u32], start: usize, out: &mut Vec<(usize, &'a [u32])>) {
        out.clear();
        if self.emits.is_empty() {
            return;
        }
        let mut node = 0u32;
        for (i, &w) in words[start..].iter().enumerate() {
            match self.children.get(&(node, w)) {
                Some(&n) => node = n,
                None => break,
            }
            for &p in &self.emits[node as usize] {
                out.push((i + 1, &self.paraphrases[p as usize]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "0.5\na man\nsomeone\n0.1\na\nan\n0.2\nman\nguy\r\n0.3\na man\na guy\n0.4\nzzz\nman\n";

    fn image() -> TableImage {
        let mut b = Builder::default();
        // Cut the text between "\r" and "\n", as decompression chunks may be cut.
        let bytes = TABLE.as_bytes();
        let cut = TABLE.find('\r').expect("has \\r") + 1;
        b.feed(&bytes[..cut]);
        b.feed(&bytes[cut..]);
        b.finish().expect("table")
    }

    #[test]
    fn parses_entries_in_order() {
        let img = image();
        assert_eq!(img.len(), 5);
        assert_eq!(img.words, ["a", "man", "someone", "an", "guy", "zzz"]);
        assert_eq!(img.lens, [[2, 1], [1, 1], [1, 1], [2, 2], [1, 1]]);
    }

    #[test]
    fn cache_bytes_round_trip_and_reject_other_sources() {
        let img = image();
        let fp = Fingerprint {
            len: 1,
            mtime_ns: 2,
            trailer: 3,
        };
        let bytes = img.to_bytes(fp);
        let back = TableImage::from_bytes(&bytes, fp).expect("valid");
        assert_eq!(back.words, img.words);
        assert_eq!(back.lens, img.lens);
        assert_eq!(back.ids, img.ids);
        let other = Fingerprint { len: 9, ..fp };
        assert!(TableImage::from_bytes(&bytes, other).is_none());
        assert!(TableImage::from_bytes(&bytes[..bytes.len() - 1], fp).is_none());
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] = 0xff;
        assert!(TableImage::from_bytes(&bad, fp).is_none());
    }

    #[test]
    fn selection_keeps_only_entries_that_can_match_in_file_order() {
        let img = image();
        let mut vocab: FxMap<&str, u32> = FxMap::default();
        for (i, w) in ["a", "man", "guy", "someone", "an"].iter().enumerate() {
            vocab.insert(w, i as u32);
        }
        // "a man" and "a guy" occur; "someone" and "an" occur nowhere as sentences.
        let s1 = [0u32, 1];
        let s2 = [0u32, 2];
        let p = img.select(&vocab, &[&s1, &s2]);
        // Kept: man->guy, a man->a guy. Dropped: a man->someone, a->an, zzz->man.
        assert_eq!(p.len(), 2);
        let mut out = Vec::new();
        p.paths(&s1, 0, &mut out);
        assert_eq!(out, vec![(2usize, &[0u32, 2][..])]);
        p.paths(&s1, 1, &mut out);
        assert_eq!(out, vec![(1usize, &[2u32][..])]);
        p.paths(&s2, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn wide_word_numbers_round_trip() {
        let mut img = image();
        let Ids::Narrow(v) = &img.ids else {
            panic!("a small table has narrow word numbers")
        };
        img.ids = Ids::Wide(v.iter().map(|&i| u32::from(i)).collect());
        let fp = Fingerprint {
            len: 1,
            mtime_ns: 2,
            trailer: 3,
        };
        let back = TableImage::from_bytes(&img.to_bytes(fp), fp).expect("valid");
        assert_eq!(back.ids, img.ids);
        let mut vocab: FxMap<&str, u32> = FxMap::default();
        vocab.insert("man", 0);
        vocab.insert("guy", 1);
        assert_eq!(back.select(&vocab, &[&[0, 1]]).len(), 1);
    }

    #[test]
    fn truncated_tables_are_errors() {
        let mut b = Builder::default();
        b.feed(b"0.5\na man\n");
        assert!(b.finish().is_err());
    }
}
