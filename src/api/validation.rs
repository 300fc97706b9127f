//! Kubernetes' name and label rules, exactly as `k8s.io/apimachinery/pkg/util/validation`
//! states them. One module for the agent and the endpoint: a namespace or name that reaches
//! a file path, a WorkloadEntry or a session token has passed through here first.
//!
//! - DNS-1123 label (namespaces): at most 63 characters, `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
//! - DNS-1123 subdomain (object names): at most 253 characters, DNS-1123 labels joined by
//!   `.` (Kubernetes does not limit each part to 63 here, and neither do we).
//! - Label keys (qualified names): an optional DNS-1123-subdomain prefix and `/`, then a
//!   name of at most 63 characters `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
//! - Label values: at most 63 characters, empty or the same form as a key's name.
//!
//! Pure: std and thiserror only.

use std::collections::BTreeMap;
use std::fmt;

pub const DNS1123_LABEL_MAX: usize = 63;
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
pub const LABEL_NAME_MAX: usize = 63;
pub const LABEL_VALUE_MAX: usize = 63;

/// Which rule a value was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Dns1123Label,
    Dns1123Subdomain,
    LabelKey,
    LabelValue,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Dns1123Label => "DNS-1123 label",
            Rule::Dns1123Subdomain => "DNS-1123 subdomain",
            Rule::LabelKey => "label key",
            Rule::LabelValue => "label value",
        })
    }
}

/// A value that breaks a rule, and how. `value` is shown quoted and escaped (a newline
/// shows as `\n`), cut at 100 characters so a hostile megabyte does not reach a log whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not a valid {rule}: {problem}", shown(.value))]
pub struct Invalid {
    pub value: String,
    pub rule: Rule,
    pub problem: String,
}

fn shown(v: &str) -> String {
    const MAX: usize = 100;
    if v.chars().count() <= MAX {
        format!("{v:?}")
    } else {
        let cut: String = v.chars().take(MAX).collect();
        format!("{cut:?}… ({} characters)", v.chars().count())
    }
}

fn invalid(value: &str, rule: Rule, problem: impl Into<String>) -> Invalid {
    Invalid {
        value: value.to_string(),
        rule,
        problem: problem.into(),
    }
}

const LABEL_FORM: &str = "must consist of lower case alphanumeric characters or '-', and must \
                          start and end with an alphanumeric character (e.g. 'my-name' or '123-abc')";
const SUBDOMAIN_FORM: &str = "must consist of lower case alphanumeric characters, '-' or '.', and \
                              must start and end with an alphanumeric character (e.g. 'example.com')";
const QUALIFIED_FORM: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must \
                              start and end with an alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc')";

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, unbounded length.
fn is_label_form(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, unbounded length.
fn is_qualified_form(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// A hostname that can go into `/etc/hosts` and DNS: RFC 1123 labels of letters, digits and
/// `-` (not at either end), at most 63 bytes each and 253 in all, an optional trailing dot.
/// Names of digits and dots only are refused: they would read as an (invalid) IPv4 address.
/// The endpoint checks egress hosts with it before rendering, the agent before it writes
/// `/etc/hosts` or uses a TLS server name.
pub fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A namespace (and anything else Kubernetes names with a DNS-1123 label).
pub fn dns1123_label(s: &str) -> Result<(), Invalid> {
    let rule = Rule::Dns1123Label;
    if s.is_empty() {
        return Err(invalid(s, rule, "must not be empty"));
    }
    if s.len() > DNS1123_LABEL_MAX {
        return Err(invalid(s, rule, too_long(DNS1123_LABEL_MAX)));
    }
    if !is_label_form(s) {
        return Err(invalid(s, rule, LABEL_FORM));
    }
    Ok(())
}

/// An object name (WorkloadGroup, OnboardingPolicy, WAR, ...).
pub fn dns1123_subdomain(s: &str) -> Result<(), Invalid> {
    let rule = Rule::Dns1123Subdomain;
    if s.is_empty() {
        return Err(invalid(s, rule, "must not be empty"));
    }
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(invalid(s, rule, too_long(DNS1123_SUBDOMAIN_MAX)));
    }
    if !s.split('.').all(is_label_form) {
        return Err(invalid(s, rule, SUBDOMAIN_FORM));
    }
    Ok(())
}

/// A label (or annotation) key: `[prefix/]name`.
pub fn label_key(k: &str) -> Result<(), Invalid> {
    let rule = Rule::LabelKey;
    let parts: Vec<&str> = k.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return Err(invalid(k, rule, "prefix part must not be empty"));
            }
            if let Err(e) = dns1123_subdomain(prefix) {
                return Err(invalid(k, rule, format!("prefix part {}", e.problem)));
            }
            *name
        }
        _ => {
            return Err(invalid(
                k,
                rule,
                format!(
                    "{QUALIFIED_FORM}, with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
                ),
            ));
        }
    };
    if name.is_empty() {
        return Err(invalid(k, rule, "name part must not be empty"));
    }
    if name.len() > LABEL_NAME_MAX {
        return Err(invalid(
            k,
            rule,
            format!("name part {}", too_long(LABEL_NAME_MAX)),
        ));
    }
    if !is_qualified_form(name) {
        return Err(invalid(k, rule, format!("name part {QUALIFIED_FORM}")));
    }
    Ok(())
}

/// A label value (may be empty).
pub fn label_value(v: &str) -> Result<(), Invalid> {
    let rule = Rule::LabelValue;
    if v.len() > LABEL_VALUE_MAX {
        return Err(invalid(v, rule, too_long(LABEL_VALUE_MAX)));
    }
    if !v.is_empty() && !is_qualified_form(v) {
        return Err(invalid(v, rule, QUALIFIED_FORM));
    }
    Ok(())
}

/// A label that breaks a rule, naming the label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {}: {source}", shown(.key))]
pub struct InvalidLabel {
    pub key: String,
    #[source]
    pub source: Invalid,
}

/// Every key and value of a label map (the first offender, in key order).
pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), InvalidLabel> {
    for (k, v) in labels {
        let wrap = |source| InvalidLabel {
            key: k.clone(),
            source,
        };
        label_key(k).map_err(wrap)?;
        label_value(v).map_err(wrap)?;
    }
    Ok(())
}

/// A namespace or name that breaks its rule, naming which of the two.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {source}")]
pub struct InvalidName {
    /// `namespace` or `name`.
    pub field: &'static str,
    #[source]
    pub source: Invalid,
}

/// A namespaced object's coordinates: the namespace a DNS-1123 label, the name a DNS-1123
/// subdomain. Both end up as path components of the file store, so neither can hold `/`,
/// be empty, or be `.`/`..`.
pub fn namespaced_name(namespace: &str, name: &str) -> Result<(), InvalidName> {
    dns1123_label(namespace).map_err(|source| InvalidName {
        field: "namespace",
        source,
    })?;
    dns1123_subdomain(name).map_err(|source| InvalidName {
        field: "name",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_labels() {
        let ok = [
            "a",
            "0",
            "bookinfo",
            "a-b",
            "1-2-3",
            "123",
            "a--b",
            &"a".repeat(63),
        ];
        for s in ok {
            assert_eq!(dns1123_label(s), Ok(()), "{s:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("-a", "start"),
            ("a-", "end"),
            ("A", "start"),
            ("aB", "start"),
            ("a.b", "start"),
            ("a_b", "start"),
            ("a b", "start"),
            ("..", "start"),
            ("../../x", "start"),
            ("a/b", "start"),
            ("a\n", "start"),
            ("é", "start"),
            (&"a".repeat(64), "no more than 63"),
        ];
        for (s, why) in bad {
            let e = dns1123_label(s).unwrap_err();
            assert_eq!(e.rule, Rule::Dns1123Label);
            let msg = e.to_string();
            assert!(
                msg.contains(why) || (*why == "empty" && msg.contains("not be empty")),
                "{s:?}: {msg}"
            );
        }
    }

    #[test]
    fn dns1123_subdomains() {
        let long_part = "a".repeat(100); // Kubernetes limits only the whole to 253
        let max = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        for s in [
            "a",
            "ratings",
            "a.b",
            "a-1.b-2.c",
            "1.2.3.4",
            long_part.as_str(),
            max.as_str(),
        ] {
            assert_eq!(dns1123_subdomain(s), Ok(()), "{s:?}");
        }
        let over = format!("{max}x");
        for s in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a.-b",
            "a-.b",
            "A.b",
            "a_b",
            "../../x",
            "a/b",
            "a b",
            over.as_str(),
        ] {
            let e = dns1123_subdomain(s).unwrap_err();
            assert_eq!(e.rule, Rule::Dns1123Subdomain, "{s:?}");
        }
        assert!(
            dns1123_subdomain(&over)
                .unwrap_err()
                .to_string()
                .contains("no more than 253")
        );
    }

    #[test]
    fn label_keys() {
        let name63 = "n".repeat(63);
        let prefix253 = format!("{}.{}", "p".repeat(126), "q".repeat(126));
        let with_long_prefix = format!("{prefix253}/{name63}");
        for k in [
            "app",
            "App",
            "a",
            "a.b_c-d",
            "A1",
            "version",
            "app.kubernetes.io/name",
            "example.com/MyName",
            "runtime.onboarding.tetrate.io/workload-group",
            "k8s.io/a",
            name63.as_str(),
            with_long_prefix.as_str(),
        ] {
            assert_eq!(label_key(k), Ok(()), "{k:?}");
        }
        let name64 = "n".repeat(64);
        let prefix254 = format!("{prefix253}x/a");
        let cases: &[(&str, &str)] = &[
            ("", "name part must not be empty"),
            ("/a", "prefix part must not be empty"),
            ("a/", "name part must not be empty"),
            ("a/b/c", "optional DNS subdomain prefix"),
            ("-a", "name part must consist"),
            ("a-", "name part must consist"),
            ("_a", "name part must consist"),
            ("a.", "name part must consist"),
            ("my key", "name part must consist"),
            ("a\nb", "name part must consist"),
            ("$(touch /tmp/p)", "optional DNS subdomain prefix"),
            ("$(id)", "name part must consist"),
            ("Example.com/a", "prefix part must consist"),
            ("ex_ample.com/a", "prefix part must consist"),
            (name64.as_str(), "name part must be no more than 63"),
            (prefix254.as_str(), "prefix part must be no more than 253"),
        ];
        for (k, why) in cases {
            let e = label_key(k).unwrap_err();
            assert_eq!(e.rule, Rule::LabelKey);
            assert!(e.to_string().contains(why), "{k:?}: {e}");
        }
    }

    #[test]
    fn label_values() {
        let v63 = "v".repeat(63);
        for v in ["", "a", "v5", "V_1.2-x", "1", v63.as_str()] {
            assert_eq!(label_value(v), Ok(()), "{v:?}");
        }
        let v64 = "v".repeat(64);
        for v in [
            "-a",
            "a-",
            ".a",
            "a_",
            "a b",
            " ",
            "a\n",
            "$(id)",
            "a/b",
            "é",
            v64.as_str(),
        ] {
            let e = label_value(v).unwrap_err();
            assert_eq!(e.rule, Rule::LabelValue, "{v:?}");
        }
    }

    #[test]
    fn label_maps_name_the_offending_label_and_escape_it() {
        let mut m = BTreeMap::new();
        m.insert("app".to_string(), "ratings".to_string());
        assert!(labels(&m).is_ok());
        m.insert("evil\nkey".to_string(), "x".to_string());
        let e = labels(&m).unwrap_err();
        assert_eq!(e.key, "evil\nkey");
        let msg = e.to_string();
        assert!(msg.starts_with("label \"evil\\nkey\": "), "{msg}");
        assert!(!msg.contains('\n'), "escaped: {msg}");
        m.remove("evil\nkey");
        m.insert("version".to_string(), "$(reboot)".to_string());
        let e = labels(&m).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.source.rule),
            ("version", Rule::LabelValue)
        );
    }

    #[test]
    fn namespaced_names_say_which_part() {
        assert_eq!(namespaced_name("bookinfo", "ratings.v1"), Ok(()));
        let e = namespaced_name("../../x", "ratings").unwrap_err();
        assert_eq!(e.field, "namespace");
        assert!(
            e.to_string()
                .starts_with("namespace \"../../x\" is not a valid DNS-1123 label"),
            "{e}"
        );
        let e = namespaced_name("bookinfo", "..").unwrap_err();
        assert_eq!(e.field, "name");
        assert!(e.to_string().contains("DNS-1123 subdomain"), "{e}");
        // A valid subdomain is not a valid namespace.
        assert!(namespaced_name("a.b", "x").is_err());
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let huge = "A".repeat(10_000);
        let msg = dns1123_label(&huge).unwrap_err().to_string();
        assert!(msg.len() < 400, "{}", msg.len());
        assert!(msg.contains("10000 characters"), "{msg}");
    }
}
