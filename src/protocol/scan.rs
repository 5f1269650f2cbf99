//! The strict RFC 8259 JSON scanner and the raw top-level member walker.
//!
//! simd-json is slightly lenient (e.g. 0.15 accepts `1000000000000000000x`: a 19-digit
//! integer followed by garbage) and rejects some valid JSON (integers beyond i64/u64).
//! Because `data` is spliced verbatim into other clients' frames, the raw `data` span
//! is re-validated here with a strict, iterative, depth-bounded scanner; the same
//! scanner is the fallback validator when simd-json refuses a document.

use super::parse::MAX_DEPTH;

/// Why the scanner refused a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// Not RFC 8259 JSON (or not where a value was expected).
    Invalid,
    /// Containers nested deeper than allowed.
    TooDeep,
}

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline]
fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while buf.get(i).is_some_and(|&b| is_ws(b)) {
        i += 1;
    }
    i
}

#[inline]
fn byte(buf: &[u8], i: usize) -> Result<u8, ScanError> {
    buf.get(i).copied().ok_or(ScanError::Invalid)
}

fn hex4(buf: &[u8], i: usize) -> Result<u32, ScanError> {
    let digits = buf.get(i..i.saturating_add(4)).ok_or(ScanError::Invalid)?;
    digits.iter().try_fold(0u32, |acc, &b| {
        let d = (b as char).to_digit(16).ok_or(ScanError::Invalid)?;
        Ok(acc << 4 | d)
    })
}

/// `buf[i]` is an opening quote; strictly scans the string (no raw control chars,
/// only the RFC 8259 escapes, surrogate escapes must pair) and returns the index just
/// past the closing quote. UTF-8 validity is simd-json's job (it checks the whole input).
fn scan_string(buf: &[u8], i: usize) -> Result<usize, ScanError> {
    use ScanError::Invalid;
    let mut j = i.checked_add(1).ok_or(Invalid)?;
    loop {
        let rest = buf.get(j..).ok_or(Invalid)?;
        j += rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .ok_or(Invalid)?;
        match byte(buf, j)? {
            b'"' => return Ok(j + 1),
            b'\\' => match byte(buf, j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' => {
                    let cp = hex4(buf, j + 2)?;
                    j += 6;
                    if (0xD800..0xDC00).contains(&cp) {
                        if byte(buf, j)? != b'\\' || byte(buf, j + 1)? != b'u' {
                            return Err(Invalid);
                        }
                        if !(0xDC00..0xE000).contains(&hex4(buf, j + 2)?) {
                            return Err(Invalid);
                        }
                        j += 6;
                    } else if (0xDC00..0xE000).contains(&cp) {
                        return Err(Invalid);
                    }
                }
                _ => return Err(Invalid),
            },
            _ => return Err(Invalid), // raw control character
        }
    }
}

/// Strict number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Any
/// magnitude is accepted. The caller checks the byte that follows.
fn scan_number(buf: &[u8], i: usize) -> Result<usize, ScanError> {
    fn digits(buf: &[u8], mut j: usize) -> Result<usize, ScanError> {
        let start = j;
        while buf.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j == start {
            Err(ScanError::Invalid)
        } else {
            Ok(j)
        }
    }
    let mut j = i;
    if buf.get(j) == Some(&b'-') {
        j += 1;
    }
    j = match byte(buf, j)? {
        b'0' => j + 1,
        b'1'..=b'9' => digits(buf, j)?,
        _ => return Err(ScanError::Invalid),
    };
    if buf.get(j) == Some(&b'.') {
        j = digits(buf, j + 1)?;
    }
    if matches!(buf.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(buf.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        j = digits(buf, j)?;
    }
    Ok(j)
}

fn scan_literal(buf: &[u8], i: usize, lit: &[u8]) -> Result<usize, ScanError> {
    let end = i.checked_add(lit.len()).ok_or(ScanError::Invalid)?;
    if buf.get(i..end) == Some(lit) {
        Ok(end)
    } else {
        Err(ScanError::Invalid)
    }
}

/// At `buf[i]` (after whitespace) expects `"key"`, whitespace, `:`, whitespace; returns
/// the index where the member's value starts.
fn scan_key(buf: &[u8], i: usize) -> Result<usize, ScanError> {
    if byte(buf, i)? != b'"' {
        return Err(ScanError::Invalid);
    }
    let j = skip_ws(buf, scan_string(buf, i)?);
    if byte(buf, j)? != b':' {
        return Err(ScanError::Invalid);
    }
    Ok(skip_ws(buf, j + 1))
}

/// Strictly scans the JSON value starting exactly at `buf[start]` and returns the index
/// just past it. Containers may nest at most `max_depth` levels (capped at
/// [`MAX_DEPTH`]); iterative with a fixed-size stack, so it cannot overflow.
fn scan_value(buf: &[u8], start: usize, max_depth: usize) -> Result<usize, ScanError> {
    use ScanError::{Invalid, TooDeep};
    let max_depth = max_depth.min(MAX_DEPTH);
    let mut stack = [0u8; MAX_DEPTH];
    let mut sp = 0usize;
    let mut i = start;
    'value: loop {
        // At the start of a value.
        match byte(buf, i)? {
            open @ (b'{' | b'[') => {
                if sp >= max_depth {
                    return Err(TooDeep);
                }
                let close = if open == b'{' { b'}' } else { b']' };
                i = skip_ws(buf, i + 1);
                if buf.get(i) == Some(&close) {
                    i += 1;
                } else {
                    stack[sp] = open;
                    sp += 1;
                    if open == b'{' {
                        i = scan_key(buf, i)?;
                    }
                    continue 'value;
                }
            }
            b'"' => i = scan_string(buf, i)?,
            b't' => i = scan_literal(buf, i, b"true")?,
            b'f' => i = scan_literal(buf, i, b"false")?,
            b'n' => i = scan_literal(buf, i, b"null")?,
            b'-' | b'0'..=b'9' => i = scan_number(buf, i)?,
            _ => return Err(Invalid),
        }
        // After a complete value: close containers or move to the next element.
        loop {
            let Some(&top) = sp.checked_sub(1).and_then(|t| stack.get(t)) else {
                return Ok(i);
            };
            let j = skip_ws(buf, i);
            match byte(buf, j)? {
                b',' => {
                    i = skip_ws(buf, j + 1);
                    if top == b'{' {
                        i = scan_key(buf, i)?;
                    }
                    continue 'value;
                }
                b'}' if top == b'{' => {
                    sp -= 1;
                    i = j + 1;
                }
                b']' if top == b'[' => {
                    sp -= 1;
                    i = j + 1;
                }
                _ => return Err(Invalid),
            }
        }
    }
}

/// Strictly validates a whole document: one value (at most [`MAX_DEPTH`] deep)
/// surrounded by optional whitespace.
pub(crate) fn validate_document(buf: &[u8]) -> Result<(), ScanError> {
    let end = scan_value(buf, skip_ws(buf, 0), MAX_DEPTH)?;
    if skip_ws(buf, end) == buf.len() {
        Ok(())
    } else {
        Err(ScanError::Invalid)
    }
}

/// True when `raw` is one strictly valid JSON value (optionally surrounded by whitespace)
/// nesting at most `MAX_DEPTH - 1` levels: the check the WebSocket path applies to a
/// `data` span before splicing it into other clients' frames (RFC 8259 grammar, unpaired
/// `\uD800`-style surrogate escapes refused). For `data` that was located by another
/// parser, e.g. the REST publish body. UTF-8 validity is the caller's (`raw` came from a
/// `&str`).
pub fn is_valid_data(raw: &[u8]) -> bool {
    scan_value(raw, skip_ws(raw, 0), MAX_DEPTH - 1).is_ok_and(|end| skip_ws(raw, end) == raw.len())
}

/// True when `doc` nests arrays/objects deeper than `max_depth` (at most [`MAX_DEPTH`];
/// the top-level container is depth 1): the scanner's own depth limit, for JSON bodies
/// that another parser reads afterwards (the REST API's). A strictly valid document is
/// judged by [`scan_value`] as the WebSocket path judges its frames. A text that is not one
/// strictly valid value (serde_json accepts some, e.g. an unpaired `\uD800` in an ignored
/// member) is judged by its deepest bracket outside strings instead, so that no text
/// nesting deeper than the limit gets past the check.
pub fn exceeds_depth(doc: &[u8], max_depth: usize) -> bool {
    match scan_value(doc, skip_ws(doc, 0), max_depth) {
        Ok(end) if skip_ws(doc, end) == doc.len() => false,
        Err(ScanError::TooDeep) => true,
        _ => bracket_depth(doc) > max_depth.min(MAX_DEPTH),
    }
}

/// Deepest `[`/`{` nesting of any text, skipping strings (with their escapes); no
/// validation.
fn bracket_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Rewrites every number token of a (strictly valid) document to `0` followed by
/// spaces, keeping all byte offsets. Used only on the fallback path so that simd-json
/// can build the envelope tape of documents whose numbers it cannot represent.
pub(crate) fn neutralize_numbers(buf: &mut [u8]) {
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        match b {
            b'"' => i = scan_string(buf, i).unwrap_or(buf.len()),
            b'-' | b'0'..=b'9' => {
                buf[i] = b'0';
                i += 1;
                while let Some(c) = buf.get_mut(i) {
                    if !matches!(*c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                        break;
                    }
                    *c = b' ';
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
}

/// Byte span `(start, end)` of the value of the `target`-th (0-based) member of the
/// top-level object in `buf`. Every member up to and including the target is scanned
/// strictly (the target's value may nest `MAX_DEPTH - 1` levels), and the byte after
/// the target's value must be `,` or `}` (after whitespace).
pub(crate) fn member_value_span(buf: &[u8], target: usize) -> Option<(usize, usize)> {
    let mut i = skip_ws(buf, 0);
    if *buf.get(i)? != b'{' {
        return None;
    }
    i = skip_ws(buf, i + 1);
    let mut ordinal = 0usize;
    loop {
        let start = scan_key(buf, i).ok()?;
        let end = scan_value(buf, start, MAX_DEPTH - 1).ok()?;
        let next = skip_ws(buf, end);
        let delim = *buf.get(next)?;
        if delim != b',' && delim != b'}' {
            return None;
        }
        if ordinal == target {
            return Some((start, end));
        }
        if delim == b'}' {
            return None;
        }
        ordinal += 1;
        i = skip_ws(buf, next + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The REST depth check gives the answer of a plain bracket count, valid JSON or not.
    #[test]
    fn exceeds_depth_agrees_with_the_bracket_count() {
        let doc = |depth: usize, before: &str| {
            let inner = depth - 1;
            format!(
                "{{{before}\"a\":{}1{}}}",
                "[".repeat(inner),
                "]".repeat(inner)
            )
        };
        for depth in [1, 2, 63, 64, 65, 200] {
            for before in ["", "\"x\":\"\\ud800\",", "\"x\":1x,", "\"x\":\"[{\","] {
                let d = doc(depth, before);
                assert_eq!(
                    exceeds_depth(d.as_bytes(), MAX_DEPTH),
                    depth > MAX_DEPTH,
                    "{d}"
                );
                assert_eq!(bracket_depth(d.as_bytes()), depth, "{d}");
            }
        }
        assert!(!exceeds_depth(b" {} ", MAX_DEPTH));
        let trailing = format!("{{}} {}", "[".repeat(MAX_DEPTH + 1));
        assert!(exceeds_depth(trailing.as_bytes(), MAX_DEPTH));
    }
}
