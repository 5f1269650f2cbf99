//! Channel glob patterns: parsing, allocation-free matching and a sound containment test.
//!
//! Syntax (protocol §1):
//! - `*` matches any run (possibly empty) of characters except `/`;
//! - `**` matches any run (possibly empty) of characters including `/`;
//! - `\*` and `\\` are a literal `*` and `\`;
//! - every other character is literal.
//!
//! Decisions: any other backslash escape (including a trailing lone `\`) is a parse error;
//! a run of three or more unescaped `*` (`***`, `****`…) is a parse error; an empty pattern,
//! a pattern longer than [`MAX_PATTERN_LEN`] bytes, and a pattern containing control characters
//! (U+0000–001F, U+007F–009F, never valid in channel names) are parse errors.
//!
//! Matching simulates the pattern's NFA over the channel's bytes with a fixed-size bitset on the
//! stack: `O(len(channel) * len(pattern))` worst case, no allocation, no recursion, so hostile
//! patterns such as `*a*a*a*a*b` cannot cause exponential time. Matching bytes is equivalent to
//! matching characters because pattern literals are whole UTF-8 characters.

use std::fmt;

/// Maximum length of a pattern's source text in bytes.
///
/// Channel names are at most 256 bytes; escaping can double a literal, so patterns get more room.
pub(crate) const MAX_PATTERN_LEN: usize = 1024;

/// Number of NFA states a pattern can have (one per element plus the accepting state).
const MAX_STATES: usize = MAX_PATTERN_LEN + 1;
/// Words in the on-stack state bitset.
const WORDS: usize = MAX_STATES.div_ceil(64);

/// Why a pattern failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error("pattern is empty")]
    Empty,
    /// The pattern is longer than [`MAX_PATTERN_LEN`] bytes.
    #[error("pattern longer than {MAX_PATTERN_LEN} bytes")]
    TooLong,
    /// A backslash followed by something other than `*` or `\` (or by nothing) at this byte offset.
    #[error("invalid escape at byte {0} (only \\* and \\\\ are allowed)")]
    BadEscape(usize),
    /// Three or more consecutive unescaped `*` starting at this byte offset.
    #[error("more than two consecutive '*' at byte {0}")]
    TripleStar(usize),
    /// A control character at this byte offset.
    #[error("control character at byte {0}")]
    ControlChar(usize),
}

/// One element of a compiled pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    /// A literal byte.
    Byte(u8),
    /// `*`: any run of bytes except `/`.
    Star,
    /// `**`: any run of bytes.
    DStar,
}

/// A parsed channel pattern. Cheap to match, immutable.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    /// Source text as written (escapes included).
    src: Box<str>,
    /// Compiled elements (escapes resolved).
    elems: Box<[Elem]>,
    /// The unescaped channel name when the pattern has no wildcard.
    literal: Option<Box<str>>,
    /// The common shapes `prefix**` and `prefix*` (a literal, then one trailing wildcard),
    /// matched with a prefix comparison instead of the state machine: history rules and
    /// token scopes are mostly `agents/**`, and they are checked on every publication.
    tail: Option<(Box<[u8]>, Elem)>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.src)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.src)
    }
}

/// True for the control characters forbidden in channel names.
fn is_control(c: char) -> bool {
    matches!(c as u32, 0x00..=0x1F | 0x7F..=0x9F)
}

impl Pattern {
    /// Parses a pattern (see the module docs for the syntax and the rejected forms).
    pub fn parse(src: &str) -> Result<Pattern, PatternError> {
        if src.is_empty() {
            return Err(PatternError::Empty);
        }
        if src.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        let mut elems = Vec::with_capacity(src.len());
        let mut literal = String::with_capacity(src.len());
        let mut has_wildcard = false;
        let mut chars = src.char_indices().peekable();
        while let Some((pos, c)) = chars.next() {
            if is_control(c) {
                return Err(PatternError::ControlChar(pos));
            }
            match c {
                '\\' => match chars.next() {
                    Some((_, e @ ('*' | '\\'))) => {
                        elems.push(Elem::Byte(e as u8));
                        literal.push(e);
                    }
                    _ => return Err(PatternError::BadEscape(pos)),
                },
                '*' => {
                    has_wildcard = true;
                    if chars.next_if(|&(_, n)| n == '*').is_some() {
                        if chars.peek().is_some_and(|&(_, n)| n == '*') {
                            return Err(PatternError::TripleStar(pos));
                        }
                        elems.push(Elem::DStar);
                    } else {
                        elems.push(Elem::Star);
                    }
                }
                _ => {
                    let mut buf = [0u8; 4];
                    for &b in c.encode_utf8(&mut buf).as_bytes() {
                        elems.push(Elem::Byte(b));
                    }
                    literal.push(c);
                }
            }
        }
        let tail = match elems.split_last() {
            Some((&last @ (Elem::Star | Elem::DStar), head))
                if head.iter().all(|e| matches!(e, Elem::Byte(_))) =>
            {
                let bytes = head.iter().map(|e| match e {
                    Elem::Byte(b) => *b,
                    _ => unreachable!("checked above"),
                });
                Some((bytes.collect(), last))
            }
            _ => None,
        };
        Ok(Pattern {
            src: src.into(),
            elems: elems.into_boxed_slice(),
            literal: (!has_wildcard).then(|| literal.into_boxed_str()),
            tail,
        })
    }

    /// Escapes a channel name so that it parses as a literal pattern matching exactly that name.
    pub fn escape(channel: &str) -> String {
        let mut out = String::with_capacity(channel.len());
        for c in channel.chars() {
            if c == '*' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    /// The pattern's source text, as given to [`Pattern::parse`].
    pub(crate) fn as_str(&self) -> &str {
        &self.src
    }

    /// True when the pattern contains no wildcard (it matches exactly one channel).
    pub fn is_literal(&self) -> bool {
        self.literal.is_some()
    }

    /// For a literal pattern, the one channel name it matches (escapes resolved).
    pub fn literal(&self) -> Option<&str> {
        self.literal.as_deref()
    }

    /// True when `channel` is in the pattern's language. Allocation-free, `O(|channel|·|pattern|)`.
    pub fn matches(&self, channel: &str) -> bool {
        if let Some(lit) = &self.literal {
            return lit.as_bytes() == channel.as_bytes();
        }
        let input = channel.as_bytes();
        if let Some((prefix, last)) = &self.tail {
            return input.starts_with(prefix)
                && (*last == Elem::DStar || !input[prefix.len()..].contains(&b'/'));
        }
        let elems = &self.elems[..];
        let n = elems.len();
        // Cheap pre-checks on the literal prefix and suffix.
        let prefix = elems.iter().take_while(|e| matches!(e, Elem::Byte(_)));
        let mut pre_len = 0;
        for (i, e) in prefix.enumerate() {
            match (e, input.get(i)) {
                (Elem::Byte(b), Some(c)) if b == c => pre_len += 1,
                _ => return false,
            }
        }
        // State bitset: bit i set = "next element to match is elems[i]"; bit n = accept.
        let mut cur = [0u64; WORDS];
        let mut next = [0u64; WORDS];
        set(&mut cur, pre_len);
        close(elems, &mut cur);
        for &c in &input[pre_len..] {
            next.iter_mut().for_each(|w| *w = 0);
            let mut any = false;
            for (wi, &word) in cur.iter().enumerate().take(n / 64 + 1) {
                let mut bits = word;
                while bits != 0 {
                    let i = wi * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    match elems.get(i) {
                        Some(Elem::Byte(b)) if *b == c => {
                            set(&mut next, i + 1);
                            any = true;
                        }
                        Some(Elem::Star) if c != b'/' => {
                            set(&mut next, i);
                            any = true;
                        }
                        Some(Elem::DStar) => {
                            set(&mut next, i);
                            any = true;
                        }
                        _ => {}
                    }
                }
            }
            if !any {
                return false;
            }
            close(elems, &mut next);
            std::mem::swap(&mut cur, &mut next);
        }
        get(&cur, n)
    }
}

/// Sets bit `i` (ignored if out of range; cannot happen for parsed patterns).
fn set(bits: &mut [u64; WORDS], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1u64 << (i % 64);
    }
}

/// Reads bit `i`.
fn get(bits: &[u64; WORDS], i: usize) -> bool {
    bits.get(i / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

/// Epsilon closure: a star can match the empty run, so state `i` at a star implies state `i+1`.
/// Epsilon edges only go forward, so one forward pass suffices.
fn close(elems: &[Elem], bits: &mut [u64; WORDS]) {
    for (i, e) in elems.iter().enumerate() {
        if matches!(e, Elem::Star | Elem::DStar) && get(bits, i) {
            set(bits, i + 1);
        }
    }
}

/// True iff every channel matched by `inner` is also matched by `outer`.
///
/// Sound (never true when some channel matches `inner` but not `outer`) and exact for the common
/// shapes (literals, prefixes with `*`/`**`), but may answer false for some exotic true
/// containments. Rules: an inner `*` must be absorbed by an outer `*` or `**`; an inner `**` only
/// by an outer `**`; inner literal bytes by equal outer bytes or by an outer wildcard that can
/// contain them (`*` never absorbs `/`). Runs a two-row DP over both element sequences.
pub fn pattern_within(inner: &Pattern, outer: &Pattern) -> bool {
    if let Some(lit) = inner.literal() {
        return outer.matches(lit);
    }
    let a = &inner.elems[..];
    let b = &outer.elems[..];
    let m = b.len();
    // row_next = W(i+1, ·), row = W(i, ·); W(i, j) = "inner[i..] ⊆ outer[j..]".
    let mut row_next = vec![false; m + 1];
    let mut row = vec![false; m + 1];
    // i = n: inner matches only "", so outer[j..] must be all wildcards.
    row_next[m] = true;
    for j in (0..m).rev() {
        row_next[j] = row_next[j + 1] && !matches!(b[j], Elem::Byte(_));
    }
    for ea in a.iter().rev() {
        row[m] = false; // inner suffix is non-empty-able or infinite; outer matches only "".
        for j in (0..m).rev() {
            let skip_outer = row[j + 1]; // outer wildcard matches empty
            row[j] = match (ea, b[j]) {
                (Elem::Byte(x), Elem::Byte(y)) => *x == y && row_next[j + 1],
                (Elem::Byte(x), Elem::Star) => (*x != b'/' && row_next[j]) || skip_outer,
                (Elem::Byte(_), Elem::DStar) => row_next[j] || skip_outer,
                (Elem::Star, Elem::Star | Elem::DStar) => row_next[j] || skip_outer,
                (Elem::DStar, Elem::DStar) => row_next[j] || skip_outer,
                (Elem::DStar, Elem::Star) => skip_outer,
                (Elem::Star | Elem::DStar, Elem::Byte(_)) => false,
            };
        }
        std::mem::swap(&mut row, &mut row_next);
    }
    row_next[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn trailing_wildcard_shapes_take_the_prefix_path_and_agree() {
        for (pat, yes, no) in [
            (
                "agents/**",
                &["agents/", "agents/a", "agents/a/b"][..],
                &["agents", "agent/a", "x/agents/a"][..],
            ),
            (
                "agents/*",
                &["agents/", "agents/a"][..],
                &["agents/a/b", "agents", "b/a"][..],
            ),
            ("a\\*x*", &["a*x", "a*xyz"][..], &["a*x/y", "abx"][..]),
            ("**", &["", "a/b"][..], &[][..]),
        ] {
            let pt = p(pat);
            assert!(pt.tail.is_some(), "{pat}");
            for s in yes {
                assert!(
                    pt.matches(s) && reference(&pt.elems, s.as_bytes()),
                    "{pat} {s}"
                );
            }
            for s in no {
                assert!(
                    !pt.matches(s) && !reference(&pt.elems, s.as_bytes()),
                    "{pat} {s}"
                );
            }
        }
        assert!(p("a/*/b").tail.is_none() && p("a/**/b").tail.is_none());
    }

    #[test]
    fn parse_errors() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("a***"), Err(PatternError::TripleStar(1)));
        assert_eq!(Pattern::parse("****"), Err(PatternError::TripleStar(0)));
        assert_eq!(Pattern::parse("a\\b"), Err(PatternError::BadEscape(1)));
        assert_eq!(Pattern::parse("a\\"), Err(PatternError::BadEscape(1)));
        assert_eq!(Pattern::parse("a\u{7}"), Err(PatternError::ControlChar(1)));
        assert_eq!(Pattern::parse("a\u{85}"), Err(PatternError::ControlChar(1)));
        assert_eq!(
            Pattern::parse(&"a".repeat(MAX_PATTERN_LEN + 1)),
            Err(PatternError::TooLong)
        );
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
        // Escaped stars do not count towards a triple.
        assert!(Pattern::parse("**\\*").is_ok());
        assert!(Pattern::parse("\\***").is_ok());
        assert!(Pattern::parse("*\\**").is_ok());
    }

    #[test]
    fn literal_patterns() {
        let lit = p("a\\*b\\\\c");
        assert!(lit.is_literal());
        assert_eq!(lit.literal(), Some("a*b\\c"));
        assert_eq!(lit.as_str(), "a\\*b\\\\c");
        assert!(lit.matches("a*b\\c"));
        assert!(!lit.matches("axb\\c"));
        assert!(!p("a*").is_literal());
        assert_eq!(p("a*").literal(), None);
        assert_eq!(p("a/**").to_string(), "a/**");
    }

    #[test]
    fn protocol_examples() {
        let pat = p("app_abc/*");
        assert!(pat.matches("app_abc/room-1"));
        assert!(pat.matches("app_abc/"));
        assert!(!pat.matches("app_abc/a/b"));
        assert!(!pat.matches("app_abc"));
        let all = p("app_abc/**");
        assert!(all.matches("app_abc/a/b"));
        assert!(all.matches("app_abc/"));
        assert!(!all.matches("app_ab"));
        assert!(p("**").matches("anything/at/all"));
        assert!(p("*").matches("room"));
        assert!(!p("*").matches("a/b"));
        assert!(p("a/*/c").matches("a/b/c"));
        assert!(!p("a/*/c").matches("a/b/x/c"));
        assert!(p("a/**/c").matches("a/b/x/c"));
        assert!(p("a/**/c").matches("a//c"));
        assert!(!p("a/**/c").matches("a/c"));
        assert!(p("*-log").matches("x-log"));
        assert!(p("**/*.md").matches("d/e/f.md"));
        assert!(!p("**/*.md").matches("d/e/f/md"));
        assert!(p("é*ü").matches("éaaü"));
        assert!(p("*ü").matches("ü"));
    }

    #[test]
    fn hostile_pattern_is_fast() {
        let pat = p(&format!("{}b", "*a".repeat(200)));
        let s = "a".repeat(256);
        let start = std::time::Instant::now();
        for _ in 0..10 {
            assert!(!pat.matches(&s));
        }
        let dpat = p(&format!("{}b", "**a".repeat(200)));
        assert!(!dpat.matches(&s));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        let longest = p(&"*a".repeat(MAX_PATTERN_LEN / 2));
        assert!(longest.matches(&"a".repeat(MAX_PATTERN_LEN / 2)));
    }

    #[test]
    fn containment() {
        let within = |a: &str, b: &str| pattern_within(&p(a), &p(b));
        assert!(within("a/b", "a/*"));
        assert!(within("a/*", "a/*"));
        assert!(within("a/*", "a/**"));
        assert!(within("a/**", "a/**"));
        assert!(within("a/*/c", "a/**"));
        assert!(within("a/b/*", "a/*/*"));
        assert!(within("a/*", "**"));
        assert!(within("**", "**"));
        assert!(within("x*y", "x*"));
        assert!(within("a/b-*", "a/*"));
        assert!(within("ab", "a*b"));
        assert!(!within("a/**", "a/*"));
        assert!(!within("a/*", "a/b"));
        assert!(!within("a/b/c", "a/*"));
        assert!(!within("**", "*"));
        assert!(!within("b/*", "a/**"));
        assert!(!within("a/*", "a/*/x"));
        assert!(!within("a*", "a"));
        assert!(!within("*", "a*"));
    }

    /// Reference matcher: straightforward recursion over chars (exponential, short inputs only).
    fn reference(pat: &[Elem], s: &[u8]) -> bool {
        match pat.split_first() {
            None => s.is_empty(),
            Some((Elem::Byte(b), rest)) => s.first() == Some(b) && reference(rest, &s[1..]),
            Some((Elem::Star, rest)) => (0..=s.len())
                .take_while(|&k| k == 0 || s[k - 1] != b'/')
                .any(|k| reference(rest, &s[k..])),
            Some((Elem::DStar, rest)) => (0..=s.len()).any(|k| reference(rest, &s[k..])),
        }
    }

    /// Pattern sources over a small alphabet so that matches are frequent.
    fn pattern_src() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                3 => Just("a"), 2 => Just("b"), 2 => Just("/"), 2 => Just("*"),
                1 => Just("**"), 1 => Just("\\*"), 1 => Just("é"),
            ],
            1..8,
        )
        .prop_map(|parts| parts.concat())
        .prop_filter("no *** run", |s| Pattern::parse(s).is_ok())
    }

    fn channel() -> impl Strategy<Value = String> {
        "[ab/*é]{0,10}"
    }

    proptest! {
        #[test]
        fn matches_agrees_with_reference(src in pattern_src(), s in channel()) {
            let pat = p(&src);
            prop_assert_eq!(pat.matches(&s), reference(&pat.elems, s.as_bytes()));
        }

        #[test]
        fn escape_round_trip(s in "[a-z/*\\\\é ._-]{1,40}") {
            let esc = Pattern::escape(&s);
            let pat = Pattern::parse(&esc).expect("escaped name parses");
            prop_assert!(pat.is_literal());
            prop_assert_eq!(pat.literal(), Some(s.as_str()));
            prop_assert_eq!(pat.as_str(), esc.as_str());
            prop_assert!(pat.matches(&s));
        }

        #[test]
        fn within_is_sound(a in pattern_src(), b in pattern_src(),
                           ss in prop::collection::vec(channel(), 1..32)) {
            let (pa, pb) = (p(&a), p(&b));
            if pattern_within(&pa, &pb) {
                for s in &ss {
                    prop_assert!(!pa.matches(s) || pb.matches(s), "{} ⊆ {} but {:?}", a, b, s);
                }
            }
        }

        #[test]
        fn within_is_sound_on_members(a in pattern_src(), b in pattern_src(),
                                      fills in prop::collection::vec("[ab/é]{0,4}", 8)) {
            // Build a channel in `a`'s language by instantiating each wildcard with a filler.
            let (pa, pb) = (p(&a), p(&b));
            let mut bytes = Vec::new();
            let mut k = 0;
            for e in pa.elems.iter() {
                match e {
                    Elem::Byte(x) => bytes.push(*x),
                    Elem::Star | Elem::DStar => {
                        let f = &fills[k % fills.len()];
                        k += 1;
                        if matches!(e, Elem::Star) {
                            bytes.extend(f.bytes().filter(|&c| c != b'/'));
                        } else {
                            bytes.extend_from_slice(f.as_bytes());
                        }
                    }
                }
            }
            let s = String::from_utf8(bytes).expect("whole chars");
            prop_assert!(pa.matches(&s));
            if pattern_within(&pa, &pb) {
                prop_assert!(pb.matches(&s), "{} ⊆ {} but {:?}", a, b, s);
            }
        }

        #[test]
        fn within_is_sound_exhaustive(a in pattern_src(), b in pattern_src()) {
            // Every string over {a, b, /, *} up to length 5.
            let (pa, pb) = (p(&a), p(&b));
            if pattern_within(&pa, &pb) {
                let alphabet = ['a', 'b', '/', '*'];
                let mut stack = vec![String::new()];
                while let Some(s) = stack.pop() {
                    prop_assert!(!pa.matches(&s) || pb.matches(&s), "{} ⊆ {} but {:?}", a, b, s);
                    if s.len() < 5 {
                        stack.extend(alphabet.iter().map(|c| format!("{s}{c}")));
                    }
                }
            }
        }

        #[test]
        fn within_is_reflexive(a in pattern_src()) {
            let pa = p(&a);
            prop_assert!(pattern_within(&pa, &pa));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            if let Ok(pat) = Pattern::parse(&s) {
                let _ = pat.matches(&s);
            }
        }
    }
}
