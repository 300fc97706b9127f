//! No document cites a file that is not in the repository: every relative markdown link and
//! every repository path (`src/…`, `docs/…`, `tests/…`, `packaging/…`, `examples/…`,
//! `templates/…`, `testdata/…`, `bench/…`, `.ci/…`, backticked or not) in README.md and
//! docs/*.md must exist, and none may cite the design notes kept outside the repository
//! (`reference/…`, `spec/…`). A new user follows these references first.

use std::path::{Path, PathBuf};

/// Top-level directories whose paths the documents cite.
const ROOTS: &[&str] = &[
    "src/",
    "docs/",
    "tests/",
    "packaging/",
    "examples/",
    "templates/",
    "testdata/",
    "bench/",
    "benches/",
    ".ci/",
    // The project's design notes, which live outside the repository: a document citing them
    // sends a reader to a file they do not have (say what the note says instead).
    "reference/",
    "spec/",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// Repository paths cited in `text`, with their line numbers. A root counts only at the start
/// of a path (not inside `/etc/…/templates/` or `<stateDir>/…`); placeholders (`docs/*.md`,
/// `src/<module>.rs`) are not paths.
fn repo_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        for (k, &(i, _)) in chars.iter().enumerate() {
            let Some(root) = ROOTS.iter().find(|r| line[i..].starts_with(**r)) else {
                continue;
            };
            if k > 0 {
                let prev = chars[k - 1].1;
                if is_path_char(prev) || matches!(prev, '<' | '>' | '$' | '{' | '}' | '~' | '@') {
                    continue;
                }
            }
            let mut end = i + root.len();
            let mut next = None;
            for &(j, c) in &chars[k..] {
                if j < end {
                    continue;
                }
                if is_path_char(c) {
                    end = j + c.len_utf8();
                } else {
                    next = Some(c);
                    break;
                }
            }
            if matches!(next, Some('*' | '<' | '{' | '…' | '[')) {
                continue;
            }
            let path = line[i..end].trim_end_matches(['.', ',', ':', ';']);
            if path.contains("..") {
                continue;
            }
            found.push((n + 1, path.to_string()));
        }
    }
    found
}

/// Relative markdown link targets `[text](target)`, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(close) = after.find(')') else { break };
            let target = after[..close].trim();
            let target = target.split_whitespace().next().unwrap_or_default();
            let external = target.contains("://") || target.starts_with("mailto:");
            if !external && !target.is_empty() && !target.starts_with('#') {
                let file = target.split('#').next().unwrap_or_default();
                found.push((n + 1, file.to_string()));
            }
            rest = &after[close..];
        }
    }
    found
}

fn documents() -> Vec<PathBuf> {
    let mut docs = vec![repo().join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

fn missing_references(doc: &Path, text: &str) -> Vec<String> {
    let rel = doc
        .strip_prefix(repo())
        .unwrap_or(doc)
        .display()
        .to_string();
    let mut missing = Vec::new();
    for (line, path) in repo_paths(text) {
        if !repo().join(&path).exists() {
            missing.push(format!("{rel}:{line}: `{path}` is not in the repository"));
        }
    }
    let dir = doc.parent().unwrap_or(Path::new("."));
    for (line, target) in link_targets(text) {
        if !dir.join(&target).exists() {
            missing.push(format!("{rel}:{line}: link to {target} leads nowhere"));
        }
    }
    missing
}

#[test]
fn documents_cite_only_files_that_exist() {
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        missing.extend(missing_references(&doc, &text));
    }
    assert!(
        missing.is_empty(),
        "documents cite files that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scanner_finds_what_it_must_and_nothing_else() {
    let text = "see docs/endpoint.md, `src/policy.rs:12` and [the unit](../packaging/systemd/x.service)\n\
                not /etc/onboarding-endpoint/templates/x nor <stateDir>/docs/y nor docs/*.md\n\
                `tests/support/` and (examples/quickstart.sh).\n\
                [anchor](#policy) [web](https://example.com/docs/a.md) [doc](policy.md#jwt)\n\
                as reference/tsb.md says";
    let paths: Vec<String> = repo_paths(text).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        paths,
        [
            "docs/endpoint.md",
            "src/policy.rs",
            "tests/support/",
            "examples/quickstart.sh",
            "reference/tsb.md"
        ]
    );
    let links: Vec<String> = link_targets(text).into_iter().map(|(_, p)| p).collect();
    assert_eq!(links, ["../packaging/systemd/x.service", "policy.md"]);
    // A reference to a file that does not exist is reported with its line.
    let doc = repo().join("docs/example.md");
    let missing = missing_references(
        &doc,
        "intro\nsee `src/no_such_module.rs`\n[x](nowhere.md)\n",
    );
    assert_eq!(
        missing,
        [
            "docs/example.md:2: `src/no_such_module.rs` is not in the repository",
            "docs/example.md:3: link to nowhere.md leads nowhere"
        ]
    );
}
