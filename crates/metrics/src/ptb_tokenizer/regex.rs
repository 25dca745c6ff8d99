//! A small regular-expression engine with the pattern syntax and matching semantics of JFlex, the
//! scanner generator that produced Stanford's `PTBLexer`.
//!
//! Patterns are matched against UTF-16 code units (JFlex 1.5 scanners read Java `char`s and map
//! only the Basic Multilingual Plane). Supported syntax: literals, `\` escapes (`\uXXXX`, `\t`,
//! `\n`, `\r`, `\f`, `\0`, `\xHH`, and any escaped punctuation), `.`, character classes with ranges
//! and negation (`[^]` is any unit), the predefined classes `[:letter:]`, `[:digit:]` and
//! `[:uppercase:]` (Java's `Character` predicates), grouping, alternation, `*`, `+`, `?`, `{n}`,
//! `{n,m}` and `{NAME}` macro references. As with JFlex's `%caseless`, literals outside character
//! classes match every case variant of themselves (Unicode simple case folding, so `i` also
//! matches `İ` and `ı`, `k` the Kelvin sign and `s` the long s); classes are taken literally.
//!
//! A compiled pattern is a Thompson NFA that is turned lazily into a DFA over a shared alphabet
//! of character classes ([`ClassMap`]); the DFA reports every position where a match may end,
//! which the lexer needs for longest-match rule selection and for trailing contexts (`r1/r2`).

use std::collections::HashMap;

use super::unicode::{DIGIT, LETTER, UPPERCASE};

/// A set of UTF-16 code units, kept as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct CharSet {
    ranges: Vec<(u16, u16)>,
}

impl CharSet {
    fn from_ranges(mut ranges: Vec<(u16, u16)>) -> CharSet {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => {
                    last.1 = last.1.max(hi);
                }
                _ => merged.push((lo, hi)),
            }
        }
        CharSet { ranges: merged }
    }

    fn negate(&self) -> CharSet {
        let mut out = Vec::new();
        let mut next: u32 = 0;
        for &(lo, hi) in &self.ranges {
            if u32::from(lo) > next {
                out.push((next as u16, lo - 1));
            }
            next = u32::from(hi) + 1;
        }
        if next <= 0xFFFF {
            out.push((next as u16, 0xFFFF));
        }
        CharSet { ranges: out }
    }

    /// Whether `unit` is in the set.
    pub(super) fn contains(&self, unit: u16) -> bool {
        let idx = self.ranges.partition_point(|&(_, hi)| hi < unit);
        idx < self.ranges.len() && self.ranges[idx].0 <= unit
    }
}

/// The case variants JFlex's `%caseless` accepts for a literal: the unit itself, its simple
/// upper, lower and title case mappings, and the few other BMP characters whose simple mappings
/// lead to the same letter (checked against Java 17 for all ASCII letters).
fn caseless_variants(unit: u16) -> Vec<(u16, u16)> {
    let mut out = vec![(unit, unit)];
    if let Some(ch) = char::from_u32(u32::from(unit)) {
        for mapped in [simple_map(ch.to_uppercase()), simple_map(ch.to_lowercase())]
            .into_iter()
            .flatten()
        {
            if let Ok(u) = u16::try_from(u32::from(mapped)) {
                out.push((u, u));
            }
        }
        let extra: &[u16] = match ch.to_ascii_lowercase() {
            'i' => &[0x0130, 0x0131],
            'k' => &[0x212A],
            's' => &[0x017F],
            _ => &[],
        };
        out.extend(extra.iter().map(|&u| (u, u)));
    }
    out
}

fn simple_map(mut it: impl Iterator<Item = char>) -> Option<char> {
    let first = it.next()?;
    if it.next().is_some() {
        None
    } else {
        Some(first)
    }
}

/// Regular-expression syntax tree.
#[derive(Clone, Debug)]
enum Ast {
    Set(CharSet),
    Cat(Vec<Ast>),
    Alt(Vec<Ast>),
    Rep(Box<Ast>, u32, Option<u32>),
}

/// Error in a pattern: always a bug in the tokenizer's rule table, reported with the pattern.
#[derive(Debug)]
pub(super) struct PatternError(pub(super) String);

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    macros: &'a HashMap<&'static str, &'static str>,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, msg: &str) -> PatternError {
        let text: String = self.chars.iter().collect();
        PatternError(format!("{msg} at offset {} in pattern `{text}`", self.pos))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn parse(mut self) -> Result<Ast, PatternError> {
        let ast = self.alt()?;
        if self.pos != self.chars.len() {
            return Err(self.err("unbalanced `)`"));
        }
        Ok(ast)
    }

    fn alt(&mut self) -> Result<Ast, PatternError> {
        let mut branches = vec![self.cat()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            branches.push(self.cat()?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Ast::Cat(Vec::new()))
        } else {
            Ast::Alt(branches)
        })
    }

    fn cat(&mut self) -> Result<Ast, PatternError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.postfix(atom)?);
        }
        Ok(Ast::Cat(items))
    }

    fn postfix(&mut self, mut atom: Ast) -> Result<Ast, PatternError> {
        loop {
            match self.peek() {
                Some('*') => {
                    self.pos += 1;
                    atom = Ast::Rep(Box::new(atom), 0, None);
                }
                Some('+') => {
                    self.pos += 1;
                    atom = Ast::Rep(Box::new(atom), 1, None);
                }
                Some('?') => {
                    self.pos += 1;
                    atom = Ast::Rep(Box::new(atom), 0, Some(1));
                }
                Some('{')
                    if self
                        .chars
                        .get(self.pos + 1)
                        .is_some_and(|c| c.is_ascii_digit()) =>
                {
                    self.pos += 1;
                    let min = self.number()?;
                    let max = if self.peek() == Some(',') {
                        self.pos += 1;
                        self.number()?
                    } else {
                        min
                    };
                    if self.peek() != Some('}') || max < min {
                        return Err(self.err("bad repetition"));
                    }
                    self.pos += 1;
                    atom = Ast::Rep(Box::new(atom), min, Some(max));
                }
                _ => return Ok(atom),
            }
        }
    }

    fn number(&mut self) -> Result<u32, PatternError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        text.parse().map_err(|_| self.err("expected a number"))
    }

    fn atom(&mut self) -> Result<Ast, PatternError> {
        let c = self.peek().ok_or_else(|| self.err("unexpected end"))?;
        match c {
            '(' => {
                self.pos += 1;
                let inner = self.alt()?;
                if self.peek() != Some(')') {
                    return Err(self.err("missing `)`"));
                }
                self.pos += 1;
                Ok(inner)
            }
            '[' => {
                if let Some(set) = self.predefined() {
                    return Ok(Ast::Set(set));
                }
                self.class()
            }
            '{' => {
                let end = self.chars[self.pos..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| self.err("missing `}`"))?;
                let name: String = self.chars[self.pos + 1..self.pos + end].iter().collect();
                let body = *self
                    .macros
                    .get(name.as_str())
                    .ok_or_else(|| self.err(&format!("unknown macro {name}")))?;
                self.pos += end + 1;
                if self.depth > 32 {
                    return Err(self.err("macros nest too deeply"));
                }
                Parser {
                    chars: body.chars().collect(),
                    pos: 0,
                    macros: self.macros,
                    depth: self.depth + 1,
                }
                .parse()
            }
            '.' => {
                self.pos += 1;
                Ok(Ast::Set(
                    CharSet::from_ranges(vec![(u16::from(b'\n'), u16::from(b'\n'))]).negate(),
                ))
            }
            _ => {
                let unit = if c == '\\' {
                    self.escape()?
                } else {
                    self.pos += 1;
                    self.unit(c)?
                };
                Ok(Ast::Set(CharSet::from_ranges(caseless_variants(unit))))
            }
        }
    }

    fn unit(&self, c: char) -> Result<u16, PatternError> {
        u16::try_from(u32::from(c)).map_err(|_| self.err("character outside the BMP"))
    }

    fn hex(&mut self, digits: usize) -> Result<u16, PatternError> {
        let text: String = self
            .chars
            .get(self.pos..self.pos + digits)
            .ok_or_else(|| self.err("short hex escape"))?
            .iter()
            .collect();
        self.pos += digits;
        u16::from_str_radix(&text, 16).map_err(|_| self.err("bad hex escape"))
    }

    /// Parses an escape starting at `\`.
    fn escape(&mut self) -> Result<u16, PatternError> {
        self.pos += 1;
        let c = self.peek().ok_or_else(|| self.err("dangling `\\`"))?;
        self.pos += 1;
        Ok(match c {
            'u' => self.hex(4)?,
            'x' => self.hex(2)?,
            't' => 0x09,
            'n' => 0x0A,
            'r' => 0x0D,
            'f' => 0x0C,
            '0' => 0x00,
            other => self.unit(other)?,
        })
    }

    /// `[:letter:]`, `[:digit:]` or `[:uppercase:]` at the current position, consumed if present.
    fn predefined(&mut self) -> Option<CharSet> {
        for (name, table) in [
            ("[:letter:]", LETTER),
            ("[:digit:]", DIGIT),
            ("[:uppercase:]", UPPERCASE),
        ] {
            let len = name.chars().count();
            if self.chars.len() >= self.pos + len
                && self.chars[self.pos..self.pos + len]
                    .iter()
                    .copied()
                    .eq(name.chars())
            {
                self.pos += len;
                return Some(CharSet::from_ranges(table.to_vec()));
            }
        }
        None
    }

    fn class(&mut self) -> Result<Ast, PatternError> {
        self.pos += 1; // '['
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        loop {
            let c = self.peek().ok_or_else(|| self.err("unterminated class"))?;
            if c == ']' {
                self.pos += 1;
                break;
            }
            if c == '[' {
                if let Some(set) = self.predefined() {
                    ranges.extend(set.ranges);
                    continue;
                }
            }
            let lo = self.class_unit()?;
            if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&c| c != ']') {
                self.pos += 1;
                let hi = self.class_unit()?;
                if hi < lo {
                    return Err(self.err("reversed range"));
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        let set = CharSet::from_ranges(ranges);
        Ok(Ast::Set(if negated { set.negate() } else { set }))
    }

    fn class_unit(&mut self) -> Result<u16, PatternError> {
        let c = self.peek().ok_or_else(|| self.err("unterminated class"))?;
        if c == '\\' {
            self.escape()
        } else {
            self.pos += 1;
            self.unit(c)
        }
    }
}

/// NFA instruction.
#[derive(Clone, Copy, Debug)]
enum Inst {
    /// Consume one unit in set `set`, then go to `next`.
    Set {
        set: u32,
        next: u32,
    },
    Split(u32, u32),
    Match,
}

/// Shared registry of the character sets that the compiled patterns use.
#[derive(Default)]
pub(super) struct SetRegistry {
    sets: Vec<CharSet>,
    index: HashMap<CharSet, u32>,
}

impl SetRegistry {
    fn intern(&mut self, set: CharSet) -> u32 {
        if let Some(&id) = self.index.get(&set) {
            return id;
        }
        let id = self.sets.len() as u32;
        self.sets.push(set.clone());
        self.index.insert(set, id);
        id
    }
}

/// The alphabet partition: every UTF-16 unit is mapped to a class such that all units of a class
/// belong to exactly the same registered sets.
pub(super) struct ClassMap {
    class_of: Vec<u16>,
    /// For each registered set, for each class: membership.
    member: Vec<Vec<bool>>,
    classes: usize,
}

impl ClassMap {
    pub(super) fn build(registry: &SetRegistry) -> ClassMap {
        let mut cuts: Vec<u32> = vec![0, 0x10000];
        for set in &registry.sets {
            for &(lo, hi) in &set.ranges {
                cuts.push(u32::from(lo));
                cuts.push(u32::from(hi) + 1);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut class_of = vec![0u16; 0x10000];
        let mut signatures: HashMap<Vec<bool>, u16> = HashMap::new();
        let mut reps: Vec<u16> = Vec::new();
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let rep = lo as u16;
            let sig: Vec<bool> = registry.sets.iter().map(|s| s.contains(rep)).collect();
            let next_id = signatures.len() as u16;
            let id = *signatures.entry(sig).or_insert_with(|| {
                reps.push(rep);
                next_id
            });
            for slot in &mut class_of[lo as usize..hi as usize] {
                *slot = id;
            }
        }
        let member = registry
            .sets
            .iter()
            .map(|s| reps.iter().map(|&r| s.contains(r)).collect())
            .collect();
        ClassMap {
            class_of,
            member,
            classes: reps.len(),
        }
    }

    #[inline]
    pub(super) fn class(&self, unit: u16) -> usize {
        usize::from(self.class_of[usize::from(unit)])
    }

    /// Number of classes.
    pub(super) fn len(&self) -> usize {
        self.classes
    }
}

const UNKNOWN: u32 = u32::MAX;
const DEAD: u32 = 0;
/// A lazily built DFA that grows past this many states is reset (bounds memory on odd input).
const MAX_STATES: usize = 20_000;

struct DState {
    accept: bool,
    nfa: Box<[u32]>,
    trans: Box<[u32]>,
}

/// A compiled pattern: its NFA plus the lazily built DFA.
pub(super) struct Regex {
    insts: Vec<Inst>,
    start: u32,
    states: Vec<DState>,
    cache: HashMap<Box<[u32]>, u32>,
    start_state: u32,
}

impl Regex {
    /// Parses `pattern` (with `{NAME}` references into `macros`) and registers its sets.
    pub(super) fn new(
        pattern: &str,
        macros: &HashMap<&'static str, &'static str>,
        registry: &mut SetRegistry,
    ) -> Result<Regex, PatternError> {
        let ast = Parser {
            chars: pattern.chars().collect(),
            pos: 0,
            macros,
            depth: 0,
        }
        .parse()?;
        let mut insts = vec![Inst::Match];
        let start = compile(&ast, 0, &mut insts, registry);
        Ok(Regex {
            insts,
            start,
            states: Vec::new(),
            cache: HashMap::new(),
            start_state: UNKNOWN,
        })
    }

    fn closure(&self, seeds: impl IntoIterator<Item = u32>) -> Box<[u32]> {
        let mut seen = vec![false; self.insts.len()];
        let mut stack: Vec<u32> = seeds.into_iter().collect();
        let mut out = Vec::new();
        while let Some(pc) = stack.pop() {
            if std::mem::replace(&mut seen[pc as usize], true) {
                continue;
            }
            match self.insts[pc as usize] {
                Inst::Split(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Inst::Set { .. } | Inst::Match => out.push(pc),
            }
        }
        out.sort_unstable();
        out.into_boxed_slice()
    }

    fn intern(&mut self, nfa: Box<[u32]>, classes: usize) -> u32 {
        if let Some(&id) = self.cache.get(&nfa) {
            return id;
        }
        let id = self.states.len() as u32;
        let accept = nfa
            .iter()
            .any(|&pc| matches!(self.insts[pc as usize], Inst::Match));
        self.states.push(DState {
            accept,
            nfa: nfa.clone(),
            trans: vec![UNKNOWN; classes].into_boxed_slice(),
        });
        self.cache.insert(nfa, id);
        id
    }

    fn ensure_start(&mut self, map: &ClassMap) {
        if self.start_state != UNKNOWN && self.states.len() <= MAX_STATES {
            return;
        }
        self.states.clear();
        self.cache.clear();
        let dead = self.intern(Box::new([]), map.classes);
        debug_assert_eq!(dead, DEAD);
        let start = self.closure([self.start]);
        self.start_state = self.intern(start, map.classes);
    }

    #[inline]
    fn step(&mut self, state: u32, class: usize, map: &ClassMap) -> u32 {
        let t = self.states[state as usize].trans[class];
        if t != UNKNOWN {
            return t;
        }
        let seeds: Vec<u32> = self.states[state as usize]
            .nfa
            .iter()
            .filter_map(|&pc| match self.insts[pc as usize] {
                Inst::Set { set, next } if map.member[set as usize][class] => Some(next),
                _ => None,
            })
            .collect();
        let target = if seeds.is_empty() {
            DEAD
        } else {
            let nfa = self.closure(seeds);
            self.intern(nfa, map.classes)
        };
        self.states[state as usize].trans[class] = target;
        target
    }

    /// Calls `on_end(end)` for every `end` (ascending) such that `text[start..end]` matches.
    pub(super) fn for_each_end(
        &mut self,
        text: &[u16],
        start: usize,
        map: &ClassMap,
        mut on_end: impl FnMut(usize),
    ) {
        self.ensure_start(map);
        let mut state = self.start_state;
        if self.states[state as usize].accept {
            on_end(start);
        }
        for (i, &unit) in text[start..].iter().enumerate() {
            state = self.step(state, map.class(unit), map);
            if state == DEAD {
                return;
            }
            if self.states[state as usize].accept {
                on_end(start + i + 1);
            }
        }
    }

    /// Whether some match can begin with a unit of class `class`.
    pub(super) fn can_start_with(&mut self, class: usize, map: &ClassMap) -> bool {
        self.ensure_start(map);
        let start = self.start_state;
        self.step(start, class, map) != DEAD
    }

    /// The end of the longest match starting at `start`, if any.
    pub(super) fn longest(&mut self, text: &[u16], start: usize, map: &ClassMap) -> Option<usize> {
        let mut best = None;
        self.for_each_end(text, start, map, |e| best = Some(e));
        best
    }

    /// Whether `text[start..end]` matches exactly.
    pub(super) fn matches(
        &mut self,
        text: &[u16],
        start: usize,
        end: usize,
        map: &ClassMap,
    ) -> bool {
        self.ensure_start(map);
        let mut state = self.start_state;
        for &unit in &text[start..end] {
            state = self.step(state, map.class(unit), map);
            if state == DEAD {
                return false;
            }
        }
        self.states[state as usize].accept
    }
}

/// Compiles `ast` so that a successful match continues at `next`; returns the entry instruction.
fn compile(ast: &Ast, next: u32, insts: &mut Vec<Inst>, registry: &mut SetRegistry) -> u32 {
    match ast {
        Ast::Set(set) => {
            let set = registry.intern(set.clone());
            insts.push(Inst::Set { set, next });
            (insts.len() - 1) as u32
        }
        Ast::Cat(items) => items
            .iter()
            .rev()
            .fold(next, |cont, item| compile(item, cont, insts, registry)),
        Ast::Alt(branches) => {
            let entries: Vec<u32> = branches
                .iter()
                .map(|b| compile(b, next, insts, registry))
                .collect();
            let mut entry = *entries.last().unwrap_or(&next);
            for &e in entries.iter().rev().skip(1) {
                insts.push(Inst::Split(e, entry));
                entry = (insts.len() - 1) as u32;
            }
            entry
        }
        Ast::Rep(inner, min, max) => {
            let mut cont = match max {
                None => {
                    // Loop: split -> (inner -> split) | next
                    insts.push(Inst::Split(UNKNOWN, next));
                    let split = (insts.len() - 1) as u32;
                    let body = compile(inner, split, insts, registry);
                    insts[split as usize] = Inst::Split(body, next);
                    split
                }
                Some(max) => {
                    let mut cont = next;
                    for _ in *min..*max {
                        let body = compile(inner, cont, insts, registry);
                        insts.push(Inst::Split(body, cont));
                        cont = (insts.len() - 1) as u32;
                    }
                    cont
                }
            };
            for _ in 0..*min {
                cont = compile(inner, cont, insts, registry);
            }
            cont
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pattern: &str, text: &str) -> Vec<usize> {
        let macros: HashMap<&'static str, &'static str> = [("D", "[0-9]"), ("W", "[a-z]+({D})?")]
            .into_iter()
            .collect();
        let mut reg = SetRegistry::default();
        let mut re = Regex::new(pattern, &macros, &mut reg).expect("pattern");
        let map = ClassMap::build(&reg);
        let units: Vec<u16> = text.encode_utf16().collect();
        let mut ends = Vec::new();
        re.for_each_end(&units, 0, &map, |e| ends.push(e));
        ends
    }

    #[test]
    fn ends_of_alternation_and_repetition() {
        assert_eq!(run("ab|a|abc", "abcd"), vec![1, 2, 3]);
        assert_eq!(run("a{2,3}", "aaaa"), vec![2, 3]);
        assert_eq!(run("a{2}", "aaaa"), vec![2]);
        assert_eq!(run("(ab)*", "ababx"), vec![0, 2, 4]);
        assert_eq!(run("x+y?", "xxy"), vec![1, 2, 3]);
    }

    #[test]
    fn literals_are_caseless_but_classes_are_not() {
        assert_eq!(run("abc", "ABC"), vec![3]);
        assert_eq!(run("[a]bc", "ABC"), Vec::<usize>::new());
        assert_eq!(run("[a]bc", "aBC"), vec![3]);
        assert_eq!(run("tis", "TİS"), vec![3]);
        assert_eq!(run("s", "\u{17F}"), vec![1]);
    }

    #[test]
    fn classes_ranges_negation_and_macros() {
        assert_eq!(run("[^a-c]", "d"), vec![1]);
        assert_eq!(run("[^a-c]", "b"), Vec::<usize>::new());
        assert_eq!(run("[,-_]", "A"), vec![1]); // a range, as in JFlex
        assert_eq!(run("[x-]", "-"), vec![1]);
        assert_eq!(run("{W}", "abc7"), vec![1, 2, 3, 4]);
        assert_eq!(run("[:letter:]+", "éa1"), vec![1, 2]);
        assert_eq!(run("[:digit:]", "٣"), vec![1]);
        assert_eq!(run("[^]", "\n"), vec![1]);
        assert_eq!(run(".", "\n"), Vec::<usize>::new());
        assert_eq!(run("\\u00A0\\.", "\u{a0}."), vec![2]);
    }

    #[test]
    fn bad_patterns_are_errors() {
        let macros = HashMap::new();
        let mut reg = SetRegistry::default();
        for bad in ["(ab", "ab)", "[ab", "{NOPE}", "a{3,2}", "\\u12"] {
            assert!(Regex::new(bad, &macros, &mut reg).is_err(), "{bad}");
        }
    }
}
