//! A pass over a pickle's opcodes before candle's reader builds objects from them, so that a
//! hostile `data.pkl` is refused while it is still bytes:
//!
//! - every length-prefixed argument (`BINUNICODE`'s u32) must lie inside the pickle (candle
//!   allocates the announced length before reading);
//! - objects may nest at most [`MAX_DEPTH`] deep (walking or dropping a deeper tree would
//!   overflow the stack);
//! - the objects built, counting the copies `BINPUT` and `BINGET` make of memoized objects, may
//!   take at most [`COST_PER_BYTE`] bytes per byte of pickle plus [`COST_SLACK`], reckoned as
//!   [`NODE_COST`] per object plus its string's length (memo references can double a tree per
//!   opcode: the pickle form of "a billion laughs").
//!
//! The pass simulates candle's stack machine for exactly the opcodes candle knows (a mark is an
//! object that any pop may take, as in candle), tracking for each stack entry only its depth and
//! the bytes its objects take. Where the simulation meets what candle refuses
//! (an unknown opcode, a pop from an empty stack, a missing memo entry) it stops and lets candle
//! report it.

use std::collections::HashMap;

/// The deepest object nesting accepted (PyTorch state dicts nest about 6 deep, TorchScript
/// module trees a few dozen).
pub const MAX_DEPTH: u32 = 512;

/// What one object is reckoned to take, besides its string.
pub const NODE_COST: u64 = 64;

/// Bytes of objects allowed per byte of pickle (the fixtures' state dicts take about 40, their
/// TorchScript archives up to about 115, mostly copies of memoized class globals; see the tests).
pub const COST_PER_BYTE: u64 = 1024;

/// Bytes of objects allowed on top of that.
pub const COST_SLACK: u64 = 1 << 20;

#[derive(Clone, Copy)]
enum Entry {
    Mark,
    Obj { depth: u32, cost: u64 },
}

struct Sim {
    stack: Vec<Entry>,
    memo: HashMap<u32, Entry>,
    cost: u64,
    max_cost: u64,
}

/// Why the simulation stopped early without a verdict: candle will refuse the pickle itself.
struct CandleRefuses;

impl Sim {
    /// Pops one entry; like candle, a mark is an object like any other here.
    fn pop(&mut self) -> Result<(u32, u64), CandleRefuses> {
        match self.stack.pop() {
            Some(Entry::Obj { depth, cost }) => Ok((depth, cost)),
            Some(Entry::Mark) => Ok((1, NODE_COST)),
            None => Err(CandleRefuses),
        }
    }

    fn pop_to_mark(&mut self) -> Result<(u32, u64), CandleRefuses> {
        let (mut depth, mut cost) = (0, 0u64);
        loop {
            match self.stack.pop() {
                Some(Entry::Mark) => return Ok((depth, cost)),
                Some(Entry::Obj { depth: d, cost: c }) => {
                    depth = depth.max(d);
                    cost = cost.saturating_add(c);
                }
                None => return Err(CandleRefuses),
            }
        }
    }

    /// Pushes a new object holding children of at most `depth` and `cost` in all, and a string
    /// of `own` bytes.
    fn push(&mut self, depth: u32, cost: u64, own: u64) -> Result<(), String> {
        self.stack.push(Entry::Obj {
            depth: depth + 1,
            cost: cost.saturating_add(NODE_COST + own),
        });
        self.count(NODE_COST + own)?;
        if depth + 1 > MAX_DEPTH {
            return Err(format!(
                "objects nest more than {MAX_DEPTH} deep; refusing it"
            ));
        }
        Ok(())
    }

    /// Adds children to the object on top of the stack (a list or dict being filled).
    fn extend_top(&mut self, depth: u32, cost: u64) -> Result<Result<(), String>, CandleRefuses> {
        match self.stack.last_mut() {
            Some(Entry::Obj { depth: d, cost: c }) => {
                *d = (*d).max(depth + 1);
                *c = c.saturating_add(cost);
                if *d > MAX_DEPTH {
                    return Ok(Err(format!(
                        "objects nest more than {MAX_DEPTH} deep; refusing it"
                    )));
                }
                Ok(Ok(()))
            }
            _ => Err(CandleRefuses),
        }
    }

    /// Adds `cost` bytes of new objects (or copies) to the total.
    fn count(&mut self, cost: u64) -> Result<(), String> {
        self.cost = self.cost.saturating_add(cost);
        if self.cost > self.max_cost {
            return Err(format!(
                "its objects would take more than {} bytes ({COST_PER_BYTE} per byte of pickle + {COST_SLACK}; memo references copied over and over?); refusing it",
                self.max_cost
            ));
        }
        Ok(())
    }
}

/// A cursor over the pickle's bytes.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len())?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Some(s)
    }

    fn line(&mut self) -> Option<()> {
        let rest = &self.data[self.pos..];
        let nl = rest.iter().position(|&b| b == b'\n')?;
        self.pos += nl + 1;
        Some(())
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// Checks `pkl` as described in the module note. `Err` says what is wrong; `Ok` means candle's
/// reader may run (it still refuses what it does not understand).
pub fn check(pkl: &[u8]) -> Result<(), String> {
    let mut sim = Sim {
        stack: Vec::new(),
        memo: HashMap::new(),
        cost: 0,
        max_cost: (pkl.len() as u64)
            .saturating_mul(COST_PER_BYTE)
            .saturating_add(COST_SLACK),
    };
    let mut b = Bytes { data: pkl, pos: 0 };
    match run(&mut sim, &mut b) {
        Ok(Ok(())) | Err(CandleRefuses) => Ok(()),
        Ok(Err(msg)) => Err(format!("at byte {}: {msg}", b.pos)),
    }
}

fn run(sim: &mut Sim, b: &mut Bytes<'_>) -> Result<Result<(), String>, CandleRefuses> {
    macro_rules! push {
        ($depth:expr, $cost:expr) => {
            push!($depth, $cost, 0)
        };
        ($depth:expr, $cost:expr, $own:expr) => {
            if let Err(msg) = sim.push($depth, $cost, $own) {
                return Ok(Err(msg));
            }
        };
    }
    macro_rules! arg {
        ($e:expr) => {
            $e.ok_or(CandleRefuses)?
        };
    }
    loop {
        let Some(&[op]) = b.take(1) else {
            return Err(CandleRefuses);
        };
        match op {
            // PROTO
            0x80 => {
                arg!(b.take(1));
            }
            // GLOBAL: module and name lines
            b'c' => {
                let at = b.pos;
                arg!(b.line());
                arg!(b.line());
                push!(0, 0, (b.pos - at) as u64);
            }
            // BINPUT, LONG_BINPUT
            b'q' | b'r' => {
                let idx = if op == b'q' {
                    u32::from(arg!(b.take(1))[0])
                } else {
                    arg!(b.u32())
                };
                let top = *sim.stack.last().ok_or(CandleRefuses)?;
                // candle stores a copy
                if let Entry::Obj { cost, .. } = top {
                    if let Err(msg) = sim.count(cost) {
                        return Ok(Err(msg));
                    }
                }
                sim.memo.insert(idx, top);
            }
            // BINGET, LONG_BINGET: a copy of the memoized object
            b'h' | b'j' => {
                let idx = if op == b'h' {
                    u32::from(arg!(b.take(1))[0])
                } else {
                    arg!(b.u32())
                };
                let entry = *sim.memo.get(&idx).ok_or(CandleRefuses)?;
                if let Entry::Obj { cost, .. } = entry {
                    if let Err(msg) = sim.count(cost) {
                        return Ok(Err(msg));
                    }
                }
                sim.stack.push(entry);
            }
            // EMPTY_TUPLE, EMPTY_DICT (and DICT, which candle reads as EMPTY_DICT), EMPTY_LIST,
            // NONE, NEWTRUE, NEWFALSE
            b')' | b'}' | b'd' | b']' | b'N' | 0x88 | 0x89 => push!(0, 0),
            // BININT1, BININT2, BININT, BINFLOAT
            b'K' | b'M' | b'J' | b'G' => {
                let n = match op {
                    b'K' => 1,
                    b'M' => 2,
                    b'J' => 4,
                    _ => 8,
                };
                arg!(b.take(n));
                push!(0, 0);
            }
            // BINUNICODE: a u32 length, then that many bytes
            b'X' => {
                let at = b.pos;
                let len = arg!(b.u32()) as usize;
                let left = b.data.len() - b.pos;
                if len > left {
                    return Ok(Err(format!(
                        "a string at byte {at} announces {len} bytes but only {left} follow"
                    )));
                }
                b.take(len);
                push!(0, 0, len as u64);
            }
            // LONG1: a u8 length, then that many bytes
            0x8a => {
                let len = arg!(b.take(1))[0] as usize;
                arg!(b.take(len));
                push!(0, 0, len as u64);
            }
            b'(' => {
                sim.stack.push(Entry::Mark);
                if let Err(msg) = sim.count(NODE_COST) {
                    return Ok(Err(msg));
                }
            }
            // TUPLE
            b't' => {
                let (d, c) = sim.pop_to_mark()?;
                push!(d, c);
            }
            // TUPLE1, TUPLE2, TUPLE3
            0x85..=0x87 => {
                let (mut d, mut c) = (0, 0u64);
                for _ in 0..(op - 0x84) {
                    let (cd, cc) = sim.pop()?;
                    d = d.max(cd);
                    c = c.saturating_add(cc);
                }
                push!(d, c);
            }
            // BINPERSID: the id wrapped as a persistent load
            b'Q' => {
                let (d, c) = sim.pop()?;
                push!(d, c);
            }
            // REDUCE, BUILD, NEWOBJ: two objects into one
            b'R' | b'b' | 0x81 => {
                let (d1, c1) = sim.pop()?;
                let (d2, c2) = sim.pop()?;
                push!(d1.max(d2), c1.saturating_add(c2));
            }
            // APPEND
            b'a' => {
                let (d, c) = sim.pop()?;
                if let Err(msg) = sim.extend_top(d, c)? {
                    return Ok(Err(msg));
                }
            }
            // SETITEM
            b's' => {
                let (d1, c1) = sim.pop()?;
                let (d2, c2) = sim.pop()?;
                if let Err(msg) = sim.extend_top(d1.max(d2), c1.saturating_add(c2))? {
                    return Ok(Err(msg));
                }
            }
            // APPENDS, SETITEMS
            b'e' | b'u' => {
                let (d, c) = sim.pop_to_mark()?;
                if let Err(msg) = sim.extend_top(d, c)? {
                    return Ok(Err(msg));
                }
            }
            // STOP
            b'.' => return Ok(Ok(())),
            _ => return Err(CandleRefuses),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PROTO 2`, then `body`, then `STOP`.
    fn pickle(body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend_from_slice(body);
        p.push(b'.');
        p
    }

    #[test]
    fn plain_objects_pass() {
        // {"a": (1, "xy")}
        let p = pickle(b"}(X\x01\x00\x00\x00aK\x01X\x02\x00\x00\x00xy\x86u");
        assert_eq!(check(&p), Ok(()));
    }

    #[test]
    fn a_string_longer_than_the_pickle_is_refused() {
        let p = pickle(b"X\xff\xff\xff\xffab");
        let e = check(&p).unwrap_err();
        assert!(
            e.contains("announces 4294967295 bytes but only 3 follow"),
            "{e}"
        );
    }

    #[test]
    fn deep_nesting_is_refused_at_the_bound() {
        // N: depth 1; each TUPLE1 adds one level.
        let ok = pickle(&[&b"N"[..], &[0x85; (MAX_DEPTH - 1) as usize]].concat());
        assert_eq!(check(&ok), Ok(()));
        let deep = pickle(&[&b"N"[..], &[0x85; MAX_DEPTH as usize]].concat());
        assert!(check(&deep).unwrap_err().contains("nest more than 512"));
        // Through a list being appended to, too.
        let mut body = b"]".to_vec();
        for _ in 0..MAX_DEPTH {
            body.extend_from_slice(b"]");
        }
        body.extend(std::iter::repeat_n(b'a', MAX_DEPTH as usize));
        assert!(check(&pickle(&body))
            .unwrap_err()
            .contains("nest more than"));
    }

    #[test]
    fn memo_copies_that_double_a_tree_are_refused() {
        // x = None; repeat: x = (x, x) through the memo: 2^k objects from 7 bytes per step.
        let mut body = b"Nq\x00".to_vec();
        for _ in 0..40 {
            body.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        let e = check(&pickle(&body)).unwrap_err();
        assert!(e.contains("its objects would take more than"), "{e}");
    }

    #[test]
    fn what_candle_refuses_is_left_to_candle() {
        // An unknown opcode, a pop from an empty stack, a missing memo entry, no STOP.
        for p in [
            &b"\x80\x02\xff."[..],
            b"\x80\x02t.",
            b"\x80\x02h\x07.",
            b"\x80\x02N",
        ] {
            assert_eq!(check(p), Ok(()));
        }
    }

    /// The fixtures' real files (torch.save state dicts, OpenAI-layout TorchScript archives in
    /// fp32 and fp16) pass with a wide margin: their objects take under an eighth of the bound.
    #[test]
    fn real_checkpoints_pass_far_below_the_bound() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for rel in [
            "tests/fixtures/smallcap-tiny/model/pytorch_model.bin",
            "tests/fixtures/smallcap-tiny/retrieval/clip_resnet.pt",
            "tests/fixtures/smallcap-tiny/retrieval/clip_resnet_jit_fp16.pt",
            "fuzz/seeds/checkpoint/torchscript",
        ] {
            let file = std::fs::File::open(root.join(rel)).unwrap();
            let mut zip = zip::ZipArchive::new(file).unwrap();
            let name = (0..zip.len())
                .filter_map(|i| zip.name_for_index(i))
                .filter_map(|n| n.ok().map(|n| n.to_string()))
                .find(|n| n.ends_with("/data.pkl"))
                .unwrap();
            let mut pkl = Vec::new();
            std::io::Read::read_to_end(&mut zip.by_name(&name).unwrap(), &mut pkl).unwrap();
            let mut sim = Sim {
                stack: Vec::new(),
                memo: HashMap::new(),
                cost: 0,
                max_cost: u64::MAX,
            };
            let mut b = Bytes { data: &pkl, pos: 0 };
            assert!(matches!(run(&mut sim, &mut b), Ok(Ok(()))), "{rel}");
            let per_byte = sim.cost as f64 / pkl.len() as f64;
            assert!(
                per_byte < COST_PER_BYTE as f64 / 8.0,
                "{rel}: {per_byte:.1} bytes per byte"
            );
            assert_eq!(check(&pkl), Ok(()), "{rel}");
        }
    }

    /// A mark popped as an ordinary object (`( R`: candle reduces with the mark as the
    /// arguments) must not stop the pass before a huge string that follows (found by the
    /// `checkpoint` fuzz target: candle then allocated 1.26 GB for a 423-byte pickle).
    #[test]
    fn a_mark_taken_by_a_pop_does_not_end_the_pass() {
        let p = pickle(b"N(RXnq3K");
        let e = check(&p).unwrap_err();
        assert!(e.contains("announces 1261662574 bytes"), "{e}");
    }
}
