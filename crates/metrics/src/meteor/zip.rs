//! Reads single files out of a zip archive (the METEOR jar ships its word lists in it): the
//! central directory is parsed to find the entry, which is stored or deflated, and its CRC-32
//! is checked.

use std::io::Read;

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 2)
        .map(|s| usize::from(u16::from_le_bytes([s[0], s[1]])))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The content of entry `name` of the zip archive `archive`. `Err` says what is wrong.
pub fn read_entry(archive: &[u8], name: &str) -> Result<Vec<u8>, String> {
    const EOCD: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const LOCAL: u32 = 0x0403_4b50;
    let malformed = || "not a valid zip archive".to_owned();
    let min = archive.len().saturating_sub(22 + 65_535);
    let eocd = (min..archive.len().saturating_sub(21))
        .rev()
        .find(|&p| u32_at(archive, p) == Some(EOCD))
        .ok_or_else(malformed)?;
    let count = u16_at(archive, eocd + 10).ok_or_else(malformed)?;
    let mut p = u32_at(archive, eocd + 16).ok_or_else(malformed)? as usize;
    for _ in 0..count {
        if u32_at(archive, p) != Some(CENTRAL) {
            return Err(malformed());
        }
        let method = u16_at(archive, p + 10).ok_or_else(malformed)?;
        let crc = u32_at(archive, p + 16).ok_or_else(malformed)?;
        let csize = u32_at(archive, p + 20).ok_or_else(malformed)? as usize;
        let usize_ = u32_at(archive, p + 24).ok_or_else(malformed)? as usize;
        let n = u16_at(archive, p + 28).ok_or_else(malformed)?;
        let extra = u16_at(archive, p + 30).ok_or_else(malformed)?;
        let comment = u16_at(archive, p + 32).ok_or_else(malformed)?;
        let local = u32_at(archive, p + 42).ok_or_else(malformed)? as usize;
        let entry_name = archive.get(p + 46..p + 46 + n).ok_or_else(malformed)?;
        p += 46 + n + extra + comment;
        if entry_name != name.as_bytes() {
            continue;
        }
        if u32_at(archive, local) != Some(LOCAL) {
            return Err(malformed());
        }
        let ln = u16_at(archive, local + 26).ok_or_else(malformed)?;
        let le = u16_at(archive, local + 28).ok_or_else(malformed)?;
        let start = local + 30 + ln + le;
        let data = archive
            .get(start..start + csize)
            .ok_or_else(|| format!("{name} is truncated"))?;
        let out = match method {
            0 => data.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(usize_);
                flate2::read::DeflateDecoder::new(data)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("{name} cannot be decompressed: {e}"))?;
                out
            }
            m => return Err(format!("{name} uses unsupported compression method {m}")),
        };
        let mut c = flate2::Crc::new();
        c.update(&out);
        if c.sum() != crc || out.len() != usize_ {
            return Err(format!("{name} is corrupt (CRC or size mismatch)"));
        }
        return Ok(out);
    }
    Err(format!("{name} is not in the archive"))
}
