//! The syntaxes rendered values land in, and what may enter each one.
//!
//! `cluster.env` (and an operator's `sidecar.env`) is *sourced by a shell running as root*
//! (`istio-start.sh`, under `set -a`), and `/etc/hosts` is read by every resolver on the VM.
//! Values there come from WorkloadGroups, Sidecars, the mesh config and the agent's own
//! registration: anyone who can edit one of those must not be able to run a command on the
//! VMs or point a name somewhere else. So a key is a shell variable name or the resource is
//! refused, a value is always quoted, and a hosts name is a DNS name or it is left out.

/// `[A-Za-z_][A-Za-z0-9_]*`: the only keys a `KEY=value` line can carry without the shell
/// reading something else (`X=1;touch /tmp/p;Y` is a command, `A-B=1` is a command name).
pub fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why `key` cannot be written to an env file, for an error message.
pub fn env_name_problem(key: &str) -> Option<String> {
    if is_env_name(key) {
        return None;
    }
    Some(format!(
        "key {key:?} is not a valid environment variable name (letters, digits and '_', not \
         starting with a digit): cluster.env is sourced by a shell, so such a key cannot be \
         written safely; rename or remove it"
    ))
}

/// Why `value` cannot be written to an env file. A shell variable cannot hold a NUL byte
/// (shells truncate or drop it), so the value would not arrive as written.
pub fn env_value_problem(value: &str) -> Option<String> {
    value
        .contains('\0')
        .then(|| "value contains a NUL character, which a shell variable cannot hold".into())
}

/// Istio's `shellescape.Quote` as it behaves in the istioctl the goldens come from, with one
/// fix. Its pattern is the Go raw string `[^\\w@%+=:,./-]`, so the class holds a backslash and
/// a literal `w` rather than `\w`: nearly every value (`foo`, `10.0.0.1`) is quoted, and only
/// values made of `w @ % + = : , . / -` stay bare. Everything else goes inside single quotes,
/// where a shell expands nothing (newlines included); a `'` becomes `'"'"'` (close, a quoted
/// quote, reopen) as istioctl writes it.
///
/// FIX: a backslash is never left bare. Bare, `w\w` reads back as `ww`, and a value ending in
/// `\` would join the next line of the file to it.
pub fn shell_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_string();
    }
    let safe = |c: char| matches!(c, 'w' | '@' | '%' | '+' | '=' | ':' | ',' | '.' | '/' | '-');
    if s.chars().all(safe) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// Why a variable cannot be written to an env file (the name or the value, and why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvLineError(pub String);

impl std::ops::Deref for EnvLineError {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// One `KEY=<quoted value>` line of an env file, or why there cannot be one.
pub fn env_line(key: &str, value: &str) -> Result<String, EnvLineError> {
    if let Some(p) = env_name_problem(key) {
        return Err(EnvLineError(p));
    }
    if let Some(p) = env_value_problem(value) {
        return Err(EnvLineError(format!("{key}: {p}")));
    }
    Ok(format!("{key}={}", shell_quote(value)))
}

/// One rule for hostnames and one for DNS-1123 labels, shared with the agent and the stores.
pub use crate::api::validation::is_hostname as is_dns_name;

/// A DNS-1123 label (a Kubernetes namespace, an Istio revision). These become part of
/// istiod's host name.
pub fn is_dns_label(s: &str) -> bool {
    crate::api::validation::dns1123_label(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["A", "_", "_A1", "ISTIO_META_X", "a_b", "X9"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1A",
            "A-B",
            "A B",
            "X=1;touch /tmp/p;Y",
            "$(id)",
            "A\nB",
            "A.B",
            "É",
            "A\0",
        ] {
            assert!(!is_env_name(bad), "{bad:?}");
            assert!(env_name_problem(bad).unwrap().contains(&format!("{bad:?}")));
        }
    }

    #[test]
    fn quoting_leaves_only_inert_values_bare() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("w.w-w/w"), "w.w-w/w");
        assert_eq!(shell_quote("foo"), "'foo'");
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
        // FIX: istioctl leaves these bare; the shell would read them differently.
        assert_eq!(shell_quote("w\\w"), "'w\\w'");
        assert_eq!(shell_quote("\\"), "'\\'");
    }

    #[test]
    fn env_lines_refuse_what_a_shell_would_misread() {
        assert_eq!(env_line("A", "x y").unwrap(), "A='x y'");
        assert!(env_line("X=1;touch /tmp/p;Y", "v").is_err());
        let e = env_line("A", "a\0b").unwrap_err();
        assert!(e.contains("A: ") && e.contains("NUL"), "{e}");
    }

    #[test]
    fn dns_names_and_labels() {
        for ok in [
            "a",
            "a.b",
            "details.bookinfo.svc",
            "x-1.example.",
            "A.Example",
        ] {
            assert!(is_dns_name(ok), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(63); 5].join(".");
        for bad in [
            "",
            ".",
            "a..b",
            "-a",
            "a-",
            "a b",
            "a\nb",
            "a#b",
            "a_b",
            "*.example",
            "1.2.3.4",
            "10",
            "evil\n8.8.8.8 bank.example",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
        for ok in ["istio-system", "rev-1", "1-22", "a"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "A", "a.b", "-a", "a-", "a b", "x\n1.2.3.4 y", "a_b"] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }
}
