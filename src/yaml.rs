//! YAML in and out of the process.
//!
//! Parsing goes through serde-saphyr (pure Rust, budgets against resource exhaustion).
//! Every error names the file and the line, because the people who read them are editing a
//! file by hand and need to know where to look.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A YAML document that failed to parse or did not match its schema.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct YamlError {
    pub file: PathBuf,
    /// 1-based line in the file, when the parser knows it.
    pub line: Option<u64>,
    pub message: String,
}

impl YamlError {
    fn from_saphyr(file: &Path, line_offset: u64, err: serde_saphyr::Error) -> Self {
        let line = err.location().map(|l| l.line() + line_offset);
        // serde-saphyr's Display appends a location and a snippet; keep the first line, which
        // carries the message itself ("unknown field `x`, expected one of ...").
        let full = err.to_string();
        let message = full
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .trim()
            .trim_end_matches(':')
            .to_string();
        let message = strip_location_suffix(&message);
        YamlError {
            file: file.to_path_buf(),
            line,
            message,
        }
    }
}

fn strip_location_suffix(msg: &str) -> String {
    // "error: line 3 column 1: ..." and "... at line 3 column 1" are redundant once we print
    // file:line ourselves.
    let mut msg = msg.strip_prefix("error: ").unwrap_or(msg);
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some((pos, tail)) = rest.split_once(": ")
        && pos
            .split(" column ")
            .all(|n| n.trim().parse::<u64>().is_ok())
    {
        msg = tail;
    }
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Parses one YAML (or JSON, which is YAML) document into `T`.
pub fn from_str<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str(text).map_err(|e| YamlError::from_saphyr(file, 0, e))
}

/// One document of a multi-document file, with where it starts.
#[derive(Debug, Clone)]
pub struct Document<'a> {
    pub text: &'a str,
    /// Lines before this document in the file (add to a document-relative line number).
    pub line_offset: u64,
}

impl Document<'_> {
    pub fn parse<T: DeserializeOwned>(&self, file: &Path) -> Result<T, YamlError> {
        serde_saphyr::from_str(self.text)
            .map_err(|e| YamlError::from_saphyr(file, self.line_offset, e))
    }
}

/// Splits a file into its documents at `---` lines, skipping documents that hold nothing but
/// comments and blank lines (what `kubectl apply -f` does too).
pub fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0u64;
    let mut pos = 0usize;
    for (line_no, line) in (0u64..).zip(text.split_inclusive('\n')) {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            push_doc(&mut docs, &text[start..pos], start_line);
            start = pos + line.len();
            start_line = line_no + 1;
        }
        pos += line.len();
    }
    push_doc(&mut docs, &text[start..], start_line);
    docs
}

fn push_doc<'a>(docs: &mut Vec<Document<'a>>, text: &'a str, line_offset: u64) {
    let meaningful = text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    });
    if meaningful {
        docs.push(Document { text, line_offset });
    }
}

/// Serializes a value as YAML for files we write (state, `describe`).
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Small {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn unknown_field_names_field_file_and_line() {
        let text = "kind: A\n---\n# comment\nname: x\nnmae: y\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2);
        #[derive(Deserialize)]
        struct Kind {
            #[allow(dead_code)]
            kind: String,
        }
        let _: Kind = docs[0].parse(Path::new("f.yaml")).unwrap();
        let err = docs[1].parse::<Small>(Path::new("f.yaml")).unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
        let shown = err.to_string();
        assert!(shown.starts_with("f.yaml:5: "), "{shown}");
        assert!(shown.contains("nmae"), "{shown}");
        assert!(
            !shown.contains("line 3 column"),
            "location said once: {shown}"
        );
    }

    #[test]
    fn comment_only_documents_are_skipped() {
        assert_eq!(documents("# nothing\n---\n\n---\na: 1\n").len(), 1);
        assert_eq!(documents("").len(), 0);
    }
}
