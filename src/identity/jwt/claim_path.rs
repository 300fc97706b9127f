//! Where in a token the workload attributes are: a small subset of JSONPath.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::identity::VerifyError;

/// A claim path outside the supported subset; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClaimPathError(String);

/// The supported subset of JSONPath for picking a claim: an optional `$`, then one or more
/// members, each `.name` (letters, digits, `_`, `-`, `:`) or `['any name']` / `["any name"]`
/// (for namespaced claims such as `https://example.com/attributes`). No wildcards, indexes
/// or filters. Examples: `.custom_attributes`, `$.ext.attributes`, `$['https://x.io/attrs']`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    source: String,
    members: Vec<String>,
}

impl ClaimPath {
    pub fn parse(path: &str) -> Result<ClaimPath, ClaimPathError> {
        let rest = path.strip_prefix('$').unwrap_or(path);
        if !path.starts_with(['$', '.']) {
            return Err(ClaimPathError(format!(
                "{path:?} must start with `.` or `$`"
            )));
        }
        let mut members = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')))
                    .unwrap_or(after.len());
                if end == 0 {
                    return Err(ClaimPathError(format!(
                        "{path:?}: expected a member name after `.` (use ['...'] for other \
                         characters)"
                    )));
                }
                members.push(after[..end].to_owned());
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"');
                let Some(quote) = quote else {
                    return Err(ClaimPathError(format!(
                        "{path:?}: only quoted members like ['name'] are supported in brackets"
                    )));
                };
                let body = &after[1..];
                let Some(close) = body.find(quote) else {
                    return Err(ClaimPathError(format!(
                        "{path:?}: unterminated quoted member"
                    )));
                };
                let Some(next) = body[close + 1..].strip_prefix(']') else {
                    return Err(ClaimPathError(format!(
                        "{path:?}: expected `]` after the quoted member"
                    )));
                };
                if close == 0 {
                    return Err(ClaimPathError(format!("{path:?}: empty member name")));
                }
                members.push(body[..close].to_owned());
                rest = next;
            } else {
                return Err(ClaimPathError(format!(
                    "{path:?}: unsupported syntax at {rest:?} (supported: .name and ['name'])"
                )));
            }
        }
        if members.is_empty() {
            return Err(ClaimPathError(format!("{path:?} names no claim")));
        }
        Ok(ClaimPath {
            source: path.to_owned(),
            members,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    fn lookup<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        self.members
            .iter()
            .try_fold(claims, |value, member| value.as_object()?.get(member))
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Attributes for policy matching: the JSON object at `path`, flattened to strings. Strings
/// are kept, numbers and booleans written as JSON, `null` dropped, nested objects and arrays
/// skipped (a policy cannot match them). A missing claim gives no attributes; a claim that is
/// not an object is refused, because the issuer then does not send what the config expects.
pub fn extract_attributes(
    claims: &Value,
    path: &ClaimPath,
) -> Result<BTreeMap<String, String>, VerifyError> {
    let Some(value) = path.lookup(claims) else {
        return Ok(BTreeMap::new());
    };
    let Some(object) = value.as_object() else {
        return Err(VerifyError::Invalid(format!(
            "the attributes claim at {path} is {}, expected an object of strings \
             (tokenFields.attributes.jsonPath)",
            json_kind(value)
        )));
    };
    let mut attributes = BTreeMap::new();
    for (key, value) in object {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                tracing::debug!(attribute = %key, "skipping a nested attribute value");
                continue;
            }
        };
        attributes.insert(key.clone(), text);
    }
    Ok(attributes)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
