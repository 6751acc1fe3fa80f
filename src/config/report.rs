//! Turning byte spans into `FILE:LINE:COL` diagnostics, and deserializing one piece of a file
//! so that every bad key in it is reported, not only the first.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use super::diag::{Diagnostic, Severity};

pub(super) struct FileText {
    pub path: PathBuf,
    pub text: String,
    /// Permission bits, for the literal-secret warning.
    pub mode: Option<u32>,
    /// Byte offset of each line's start, so that a position costs a binary search, not a scan
    /// of the text before it (10,000 sources took seconds to validate).
    line_starts: Vec<usize>,
}

impl FileText {
    pub fn new(path: PathBuf, text: String, mode: Option<u32>) -> FileText {
        let line_starts = line_starts(&text);
        FileText {
            path,
            text,
            mode,
            line_starts,
        }
    }
}

/// Collects diagnostics with the index of their file, for sorting by file order then position.
#[derive(Default)]
pub(super) struct Reporter {
    pub files: Vec<FileText>,
    pub errors: Vec<(usize, Diagnostic)>,
    pub warnings: Vec<(usize, Diagnostic)>,
}

/// Byte offsets where the lines of `text` start.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// 1-based line and column (in characters) of a byte offset; `starts` is `line_starts(text)`.
fn line_col(text: &str, starts: &[usize], byte: usize) -> (usize, usize) {
    let mut byte = byte.min(text.len());
    while !text.is_char_boundary(byte) {
        byte -= 1;
    }
    // The last line starting at or before `byte`.
    let line = starts.partition_point(|&s| s <= byte);
    let line_start = starts[line - 1];
    (line, text[line_start..byte].chars().count() + 1)
}

impl Reporter {
    pub fn position(&self, file: usize, span: &Range<usize>) -> (usize, usize) {
        self.files
            .get(file)
            .map_or((1, 1), |f| line_col(&f.text, &f.line_starts, span.start))
    }

    pub fn place(&self, file: usize, span: &Range<usize>) -> String {
        let (line, col) = self.position(file, span);
        format!("{}:{line}:{col}", self.files[file].path.display())
    }

    pub fn push(
        &mut self,
        severity: Severity,
        file: usize,
        span: &Range<usize>,
        context: &str,
        field: &str,
        message: impl Into<String>,
    ) {
        let (line, column) = self.position(file, span);
        let d = Diagnostic {
            severity,
            file: self.files[file].path.clone(),
            line,
            column,
            context: context.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        };
        match severity {
            Severity::Error => self.errors.push((file, d)),
            Severity::Warning => self.warnings.push((file, d)),
        }
    }

    pub fn error(
        &mut self,
        file: usize,
        span: &Range<usize>,
        context: &str,
        field: &str,
        message: impl Into<String>,
    ) {
        self.push(Severity::Error, file, span, context, field, message);
    }

    /// Deserializes `value` (a table) into `T`. On an error, reports it, drops the top-level
    /// key it sits in and tries again, so that every bad key is reported. Dropped keys are added
    /// to `removed`: a later "missing required key" for them would only repeat the error.
    /// Returns `None` only when the value is not a table or an error cannot be tied to a key.
    pub fn deserialize<T: DeserializeOwned>(
        &mut self,
        file: usize,
        context: &str,
        value: &Spanned<DeValue<'_>>,
        removed: &mut BTreeSet<String>,
    ) -> Option<T> {
        if !value.get_ref().is_table() {
            let found = value.get_ref().type_str();
            self.error(
                file,
                &value.span(),
                context,
                "",
                format!("expected a table, found {found}"),
            );
            return None;
        }
        let mut current = value.clone();
        loop {
            let err = match T::deserialize(ValueDeserializer::from(current.clone())) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let span = err.span().unwrap_or_else(|| current.span());
            let mut path = Vec::new();
            locate(current.get_ref(), &span, &mut path);
            let (named, message) = rewrite_message(err.message());
            let mut field = render_path(&path);
            if let Some(name) = named.filter(|n| !field.ends_with(n.as_str())) {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(&name);
            }
            self.error(file, &span, context, &field, message);
            let top = match path.first() {
                Some(Segment::Key(k)) => k.clone(),
                _ => return None,
            };
            if let DeValue::Table(t) = current.get_mut() {
                t.remove(top.as_str());
            }
            if !removed.insert(top) {
                return None;
            }
        }
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The deepest key path whose key or value span holds `span`. Tables declared by a header only
/// span the header, so every child is searched, not only those whose span contains `span`.
fn locate(value: &DeValue<'_>, span: &Range<usize>, path: &mut Vec<Segment>) -> bool {
    /// A child: its path segment, its key's span (tables only), its value.
    type Child<'a, 'i> = (Segment, Option<Range<usize>>, &'a Spanned<DeValue<'i>>);
    let children: Vec<Child<'_, '_>> = match value {
        DeValue::Table(t) => t
            .iter()
            .map(|(k, v)| (Segment::Key(k.get_ref().to_string()), Some(k.span()), v))
            .collect(),
        DeValue::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (Segment::Index(i), None, v))
            .collect(),
        _ => return false,
    };
    for (seg, key_span, v) in children {
        path.push(seg);
        if key_span.is_some_and(|k| contains(&k, span)) {
            return true;
        }
        if locate(v.get_ref(), span, path) || contains(&v.span(), span) {
            return true;
        }
        path.pop();
    }
    false
}

/// serde's messages, in this program's words: the key name found in the message (for a missing
/// key the span is the enclosing table), and the message.
fn rewrite_message(msg: &str) -> (Option<String>, String) {
    fn quoted(rest: &str) -> Option<(String, &str)> {
        rest.split_once('`')
            .map(|(name, tail)| (name.to_owned(), tail))
    }
    if let Some((name, tail)) = msg.strip_prefix("unknown field `").and_then(quoted) {
        let tail = tail.trim_start_matches(", ");
        let message = if name.starts_with("$__toml_private") {
            "invalid type: datetime".to_owned()
        } else if tail.is_empty() || tail.starts_with("there are no fields") {
            "unknown key".to_owned()
        } else {
            format!("unknown key; {tail}")
        };
        return (None, message);
    }
    if let Some((name, _)) = msg.strip_prefix("missing field `").and_then(quoted) {
        return (Some(name), "missing required key".to_owned());
    }
    // serde names Rust types; the operator wrote TOML.
    let msg = msg
        .replace("expected i64", "expected an integer")
        .replace("$__toml_private_datetime", "datetime");
    (None, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let t = "a\nbé = x\n";
        let lc = |b| line_col(t, &line_starts(t), b);
        assert_eq!(lc(0), (1, 1));
        assert_eq!(lc(2), (2, 1));
        // 'x' is at byte 8 ('é' is two bytes) but column 6.
        assert_eq!(lc(8), (2, 6));
        assert_eq!(lc(7), (2, 5));
        assert_eq!(lc(999), (3, 1));
        assert_eq!(lc(4), (2, 2)); // inside 'é': back to its start
        assert_eq!(lc(1), (1, 2)); // the newline itself ends line 1
    }

    #[test]
    fn line_col_agrees_with_counting_from_the_start() {
        let t = "\n\nab\n[x.é]\n\n  k = 1\nlast";
        let starts = line_starts(t);
        for byte in (0..=t.len()).filter(|b| t.is_char_boundary(*b)) {
            let before = &t[..byte];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let want = (
                before.matches('\n').count() + 1,
                before[line_start..].chars().count() + 1,
            );
            assert_eq!(line_col(t, &starts, byte), want, "byte {byte}");
        }
    }
}
