//! `get war` and `describe war`, printed as `kubectl get war` / `kubectl describe war` do.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::api::registration::WorkloadAutoRegistration;
use crate::timestamp;

/// `kubectl get war [-A]`: columns padded to the widest cell plus three spaces.
pub fn war_table(
    wars: &[WorkloadAutoRegistration],
    all_namespaces: bool,
    now: SystemTime,
) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["NAME", "AGENT CONNECTED", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.iter().map(|s| s.to_string()).collect());
    let mut sorted: Vec<&WorkloadAutoRegistration> = wars.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    for w in sorted {
        let age = w
            .metadata
            .creation_timestamp
            .as_deref()
            .and_then(timestamp::parse)
            .map(|t| timestamp::age(t, now))
            .unwrap_or_else(|| "<unknown>".into());
        let mut row = vec![
            w.metadata.name.clone(),
            w.agent_connected().to_string(),
            age,
        ];
        if all_namespaces {
            row.insert(0, w.metadata.namespace.clone());
        }
        rows.push(row);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `kubectl describe war NAME`: the resource with camelCase keys turned into words.
pub fn describe(war: &WorkloadAutoRegistration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", war.metadata.name);
    let _ = writeln!(out, "Namespace:    {}", war.metadata.namespace);
    let labels: Vec<String> = war
        .metadata
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        out,
        "Labels:       {}",
        if labels.is_empty() {
            "<none>".to_string()
        } else {
            labels.join("\n              ")
        }
    );
    let _ = writeln!(out, "API Version:  {}", war.api_version);
    let _ = writeln!(out, "Kind:         {}", war.kind);
    let _ = writeln!(out, "Metadata:");
    if let Some(ts) = &war.metadata.creation_timestamp {
        let _ = writeln!(out, "  Creation Timestamp:  {ts}");
    }
    for o in &war.metadata.owner_references {
        let _ = writeln!(
            out,
            "  Owner References:\n    Kind:  {}\n    Name:  {}",
            o.kind, o.name
        );
    }
    if let Ok(v) = serde_json::to_value(&war.spec) {
        let _ = writeln!(out, "Spec:");
        humanize(&v, 1, &mut out);
    }
    if let Ok(v) = serde_json::to_value(&war.status) {
        let _ = writeln!(out, "Status:");
        humanize(&v, 1, &mut out);
    }
    let _ = writeln!(out, "Events:       <none>");
    out
}

fn humanize(v: &serde_json::Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m {
                let key = words(k);
                match val {
                    serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                        let _ = writeln!(out, "{pad}{key}:");
                        humanize(val, depth + 1, out);
                    }
                    scalar => {
                        let _ = writeln!(out, "{pad}{key}:  {}", scalar_text(scalar));
                    }
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                humanize(item, depth, out);
            }
        }
        scalar => {
            let _ = writeln!(out, "{pad}{}", scalar_text(scalar));
        }
    }
}

fn scalar_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `instanceId` -> `Instance Id`, as kubectl describe prints CRD fields; keys with
/// punctuation (label names) are kept as they are.
fn words(k: &str) -> String {
    if !k.chars().all(|c| c.is_ascii_alphanumeric()) {
        return k.to_string();
    }
    let mut out = String::new();
    for (i, c) in k.chars().enumerate() {
        if i == 0 {
            out.push(c.to_ascii_uppercase());
        } else if c.is_ascii_uppercase() {
            out.push(' ');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_like_kubectl() {
        assert_eq!(words("instanceId"), "Instance Id");
        assert_eq!(words("connectedOver"), "Connected Over");
        assert_eq!(words("app.kubernetes.io/name"), "app.kubernetes.io/name");
    }
}
