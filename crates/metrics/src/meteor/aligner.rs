//! METEOR's alignment search (`Aligner.align` and its beam search `resolve`): the matches that
//! are the only candidates for their words are fixed, the rest are chosen left to right over
//! the reference by a beam search (width 40) that prefers more weighted matched words, then
//! fewer chunks, then less distance. Quirks that decide ties are kept: the weighted counts are
//! `int`s that truncate each addition (`matches1 += length * weight`), and choosing a match
//! adds its distance to the path that skips it, not to the new path.

use super::stage::{Match, Sentence, Stage, MODULES};

/// Beam width (`Constants.DEFAULT_BEAM_SIZE`).
const BEAM: usize = 40;
/// The weights the search gives each module's matches (set by `MeteorScorer` for evaluation).
const SEARCH_WEIGHTS: [f64; MODULES] = [1.0, 0.5, 0.5, 0.5];

/// The chosen alignment's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Alignment {
    /// Hypothesis words.
    pub len1: usize,
    /// Reference words.
    pub len2: usize,
    /// Function words among the hypothesis words.
    pub function1: usize,
    /// Function words among the reference words.
    pub function2: usize,
    /// Per module: matched hypothesis content words.
    pub content1: [usize; MODULES],
    /// Per module: matched reference content words.
    pub content2: [usize; MODULES],
    /// Per module: matched hypothesis function words.
    pub functional1: [usize; MODULES],
    /// Per module: matched reference function words.
    pub functional2: [usize; MODULES],
    /// Number of chunks (runs of matches contiguous in both sentences).
    pub chunks: usize,
}

#[derive(Clone)]
struct Path {
    matches: Vec<Option<Match>>,
    matches1: i32,
    matches2: i32,
    chunks: i32,
    idx: usize,
    last_match_end: Option<usize>,
    distance: i32,
    used1: Vec<bool>,
    used2: Vec<bool>,
}

impl Path {
    fn is_used(&self, m: &Match) -> bool {
        self.used2[m.start..m.start + m.length].contains(&true)
            || self.used1[m.match_start..m.match_start + m.match_length].contains(&true)
    }

    fn set_used(&mut self, m: &Match) {
        self.used2[m.start..m.start + m.length].fill(true);
        self.used1[m.match_start..m.match_start + m.match_length].fill(true);
    }

    /// Counts `m` as the path's next match (weights, chunk break, position).
    fn take(&mut self, m: &Match) {
        let w = SEARCH_WEIGHTS[usize::from(m.module)];
        // Java: `int += double` truncates the sum.
        self.matches1 = (f64::from(self.matches1) + m.match_length as f64 * w) as i32;
        self.matches2 = (f64::from(self.matches2) + m.length as f64 * w) as i32;
        if self.last_match_end.is_some_and(|e| e != m.match_start) {
            self.chunks += 1;
        }
        self.idx = m.start + m.length;
        self.last_match_end = Some(m.match_start + m.match_length);
    }
}

fn distance(m: &Match) -> i32 {
    (m.start as i64 - m.match_start as i64).unsigned_abs() as i32
}

/// `PARTIAL_COMPARE_TOTAL`: more weighted matches first, then fewer chunks, then less distance.
fn compare(x: &Path, y: &Path) -> std::cmp::Ordering {
    (y.matches1 + y.matches2)
        .cmp(&(x.matches1 + x.matches2))
        .then(x.chunks.cmp(&y.chunks))
        .then(x.distance.cmp(&y.distance))
}

fn resolve(stage: &Stage, start: Path) -> Path {
    let n = stage.matches.len();
    let mut next: Vec<Path> = vec![start];
    for current in 0..=n {
        let mut paths = std::mem::take(&mut next);
        // Stable, as Java's `Collections.sort`.
        paths.sort_by(compare);
        let mut first_dropped: Option<Path> = None;
        for mut path in paths.into_iter().take(BEAM) {
            if current == n {
                if path.last_match_end.is_some() {
                    path.chunks += 1;
                }
                next.push(path);
                continue;
            }
            if path.used2[current] {
                if current < path.idx {
                    next.push(path);
                } else if let Some(m) = path.matches.get(path.idx).copied().flatten() {
                    path.take(&m);
                    path.distance += distance(&m);
                    next.push(path);
                } else if first_dropped.is_none() {
                    first_dropped = Some(path);
                }
                continue;
            }
            for m in &stage.matches[current] {
                if path.is_used(m) {
                    continue;
                }
                let mut p = path.clone();
                p.set_used(m);
                p.matches[current] = Some(*m);
                p.take(m);
                // The jar adds the distance to the path being extended, not to the new one.
                path.distance += distance(m);
                next.push(p);
            }
            if path.last_match_end.is_some() {
                path.chunks += 1;
                path.last_match_end = None;
            }
            path.idx += 1;
            next.push(path);
        }
        if next.is_empty() {
            // "Warning: unexpected conditions - skipping matches until possible to continue"
            if let Some(p) = first_dropped {
                next.push(p);
            }
        }
    }
    next.sort_by(compare);
    next.into_iter()
        .next()
        .unwrap_or_else(|| empty_path(stage.coverage1.len(), n))
}

fn empty_path(n1: usize, n2: usize) -> Path {
    Path {
        matches: vec![None; n2],
        matches1: 0,
        matches2: 0,
        chunks: 0,
        idx: 0,
        last_match_end: None,
        distance: 0,
        used1: vec![false; n1],
        used2: vec![false; n2],
    }
}

/// `(matches1, matches2, chunks)` of the final matches (`getCountAndChunks`).
fn count_chunks(matches: &[Option<Match>]) -> usize {
    let mut chunks = 0;
    let mut idx = 0;
    let mut last_end: Option<usize> = None;
    while idx < matches.len() {
        match matches[idx] {
            None => {
                if last_end.take().is_some() {
                    chunks += 1;
                }
                idx += 1;
            }
            Some(m) => {
                if last_end.is_some_and(|e| e != m.match_start) {
                    chunks += 1;
                }
                idx = m.start + m.length;
                last_end = Some(m.match_start + m.match_length);
            }
        }
    }
    if last_end.is_some() {
        chunks += 1;
    }
    chunks
}

/// Aligns hypothesis `test` (line 1) with `reference` (line 2).
pub fn align(
    test: &Sentence,
    reference: &Sentence,
    paraphrases: &super::paraphrase::Paraphrases,
) -> Alignment {
    let (n1, n2) = (test.len(), reference.len());
    let modules = if n1 == n2 && test.hash == reference.hash {
        1
    } else {
        MODULES
    };
    let stage = Stage::build(test, reference, modules, paraphrases);

    // Matches that are the only candidates for all their words are definite.
    let mut start = empty_path(n1, n2);
    for (i, ms) in stage.matches.iter().enumerate() {
        if let [m] = ms.as_slice() {
            let overlap = stage.coverage2[i..i + m.length].iter().any(|&c| c != 1)
                || stage.coverage1[m.match_start..m.match_start + m.match_length]
                    .iter()
                    .any(|&c| c != 1);
            if !overlap {
                start.matches[i] = Some(*m);
                start.set_used(m);
            }
        }
    }
    let best = resolve(&stage, start);

    let mut a = Alignment {
        len1: n1,
        len2: n2,
        function1: test.function.iter().filter(|&&f| f).count(),
        function2: reference.function.iter().filter(|&&f| f).count(),
        chunks: count_chunks(&best.matches),
        ..Alignment::default()
    };
    for m in best.matches.iter().flatten() {
        let module = usize::from(m.module);
        for k in m.match_start..m.match_start + m.match_length {
            if test.function[k] {
                a.functional1[module] += 1;
            } else {
                a.content1[module] += 1;
            }
        }
        for k in m.start..m.start + m.length {
            if reference.function[k] {
                a.functional2[module] += 1;
            } else {
                a.content2[module] += 1;
            }
        }
    }
    a
}
