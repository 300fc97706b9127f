//! `get war` and `describe war`, printed as `kubectl get war` / `kubectl describe war` do,
//! and the text of the errors the operator's commands print.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::api::identity::WorkloadIdentity;
use crate::api::registration::{self as reg, WorkloadAutoRegistration};
use crate::timestamp;

/// `-o` of `get`, as kubectl spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The table.
    Table,
    /// The table with the columns an operator debugging a host wants.
    Wide,
    Yaml,
    Json,
    /// `<kind>.<group>/<name>`, one per line.
    Name,
}

/// What `get war [NAME]` prints on stdout for `wars` in the format asked. `single` is true
/// when one registration was asked for by name: YAML and JSON then print the object itself,
/// otherwise a `kind: List` (what `kubectl get -o yaml` prints, and what the endpoint's
/// manifest directory accepts back).
pub fn get_output(
    wars: &[WorkloadAutoRegistration],
    single: bool,
    output: Output,
    all_namespaces: bool,
    now: SystemTime,
) -> Result<String, serde_json::Error> {
    let mut sorted: Vec<&WorkloadAutoRegistration> = wars.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let value = || -> Result<serde_json::Value, serde_json::Error> {
        match (single, sorted.as_slice()) {
            (true, [one]) => serde_json::to_value(one),
            _ => Ok(serde_json::json!({
                "apiVersion": "v1",
                "items": sorted.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?,
                "kind": "List",
                "metadata": {"resourceVersion": ""},
            })),
        }
    };
    Ok(match output {
        Output::Table => war_table(wars, all_namespaces, false, now),
        Output::Wide => war_table(wars, all_namespaces, true, now),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&value()?)?;
            s.push('\n');
            s
        }
        Output::Yaml => crate::yaml::to_string(&value()?).map_err(serde::ser::Error::custom)?,
        Output::Name => sorted
            .iter()
            .map(|w| {
                format!(
                    "workloadautoregistration.{}/{}\n",
                    reg::API_VERSION.split('/').next().unwrap_or_default(),
                    w.metadata.name
                )
            })
            .collect(),
    })
}

/// `kubectl get war [-A] [-o wide]`: columns padded to the widest cell plus three spaces.
/// Wide adds the WorkloadGroup the host joined, the address the mesh dials, who the host is,
/// the endpoint instance it is connected to and its agent's version.
pub fn war_table(
    wars: &[WorkloadAutoRegistration],
    all_namespaces: bool,
    wide: bool,
    now: SystemTime,
) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["NAME", "AGENT CONNECTED", "AGE"];
    if wide {
        header.extend([
            "WORKLOAD GROUP",
            "ADDRESS",
            "IDENTITY",
            "CONNECTED TO",
            "AGENT VERSION",
        ]);
    }
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
        if wide {
            let or_none = |s: String| if s.is_empty() { "<none>".into() } else { s };
            row.extend([
                or_none(w.spec.workload_group.name.clone()),
                or_none(
                    crate::registration::workload_address(&w.spec.registration).unwrap_or_default(),
                ),
                or_none(short_identity(&w.spec.identity)),
                or_none(
                    w.status
                        .active_agent_connection
                        .as_ref()
                        .map(|c| c.connected_to.clone())
                        .unwrap_or_default(),
                ),
                or_none(w.spec.registration.agent.version.clone()),
            ]);
        }
        if all_namespaces {
            row.insert(0, w.metadata.namespace.clone());
        }
        rows.push(row.iter().map(|c| cell(c)).collect());
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
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

/// Who the host is, in one table cell: the platform and the values that tell hosts apart
/// (the full identity is in `describe` and `-o yaml`).
pub fn short_identity(id: &WorkloadIdentity) -> String {
    match id {
        WorkloadIdentity::Jwt(j) => format!("jwt:{}", j.subject),
        WorkloadIdentity::Aws(a) => match (&a.ec2, &a.ecs) {
            (_, Some(ecs)) => format!("aws-ecs:{}/{}/{}", a.account, ecs.cluster, ecs.task_id),
            (Some(ec2), None) => format!("aws-ec2:{}/{}", a.account, ec2.instance_id),
            (None, None) => format!("aws:{}", a.account),
        },
        WorkloadIdentity::Gcp(g) => match &g.gce {
            Some(gce) if !gce.instance_name.is_empty() => {
                format!("gcp:{}/{}", g.project_id, gce.instance_name)
            }
            Some(gce) => format!("gcp:{}/{}", g.project_id, gce.instance_id),
            None => format!("gcp:{}", g.project_id),
        },
        WorkloadIdentity::Azure(a) => match &a.compute {
            Some(c) if !c.name.is_empty() => format!("azure:{}/{}", a.subscription, c.name),
            Some(c) => format!("azure:{}/{}", a.subscription, c.instance_id),
            None => format!("azure:{}", a.subscription),
        },
    }
}

/// A table cell: control characters (a newline in a JWT subject, an escape sequence) are
/// shown escaped rather than sent to the terminal.
fn cell(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

/// An error and its causes on one line, each cause once. anyhow's `{:#}` appends every
/// source's text, and an error whose own message already quotes its source (`cannot read
/// FILE: {source}`) would print that cause twice; a cause whose text is already in the line
/// is skipped.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
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

    fn war(
        ns: &str,
        name: &str,
        subject: &str,
        connected_to: Option<&str>,
    ) -> WorkloadAutoRegistration {
        let mut v = serde_json::json!({
            "apiVersion": reg::API_VERSION,
            "kind": reg::KIND,
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "identity": {"jwt": {"issuer": "https://idp.example", "subject": subject}},
                "registration": {
                    "agent": {"version": "0.1.0"},
                    "sidecar": {"istio": {"version": "1.28.0"}},
                    "host": {"addresses": [{"ip": "10.0.0.7", "type": "VPC"}]},
                },
                "workloadGroup": {
                    "name": "ratings", "namespace": ns, "spec": {}, "takenAt": "2026-01-01T00:00:00Z",
                },
            },
            "status": {"conditions": [{
                "type": "AgentConnected", "status": "True", "reason": "AgentEstablishedConnection",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }]},
        });
        if let Some(c) = connected_to {
            v["status"]["activeAgentConnection"] = serde_json::json!({"connectedTo": c});
        }
        serde_json::from_value(v).unwrap()
    }

    fn at(rfc3339: &str) -> SystemTime {
        timestamp::parse(rfc3339).unwrap()
    }

    #[test]
    fn table_narrow_and_wide() {
        let wars = [
            war("bookinfo", "ratings-jwt-corp-vm-2", "vm-2", None),
            war(
                "bookinfo",
                "ratings-jwt-corp-vm-1",
                "vm-1",
                Some("onboarding-0"),
            ),
        ];
        let now = at("2026-01-01T00:02:00Z");
        assert_eq!(
            war_table(&wars, false, false, now),
            "NAME                    AGENT CONNECTED   AGE\n\
             ratings-jwt-corp-vm-1   True              2m\n\
             ratings-jwt-corp-vm-2   True              2m\n"
        );
        let wide = war_table(&wars, true, true, now);
        let mut lines = wide.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .split("   ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(
            header,
            [
                "NAMESPACE",
                "NAME",
                "AGENT CONNECTED",
                "AGE",
                "WORKLOAD GROUP",
                "ADDRESS",
                "IDENTITY",
                "CONNECTED TO",
                "AGENT VERSION"
            ]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "bookinfo",
                "ratings-jwt-corp-vm-1",
                "True",
                "2m",
                "ratings",
                "10.0.0.7",
                "jwt:vm-1",
                "onboarding-0",
                "0.1.0"
            ]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(row[7], "<none>", "{wide}");
    }

    #[test]
    fn cells_escape_control_characters() {
        let wars = [war("bookinfo", "w", "vm\n\u{1b}[31mred", None)];
        let t = war_table(&wars, false, true, at("2026-01-01T00:00:00Z"));
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains('\u{1b}'), "{t}");
        assert!(t.contains(r"jwt:vm\n\u{1b}[31mred"), "{t}");
    }

    #[test]
    fn yaml_and_json_print_one_object_or_a_list() {
        let one = [war("bookinfo", "w1", "vm-1", None)];
        let now = at("2026-01-01T00:00:00Z");
        let y = get_output(&one, true, Output::Yaml, false, now).unwrap();
        let back: WorkloadAutoRegistration = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(back, one[0]);
        let j = get_output(&one, true, Output::Json, false, now).unwrap();
        let back: WorkloadAutoRegistration = serde_json::from_str(&j).unwrap();
        assert_eq!(back, one[0]);

        let two = [war("a", "w2", "vm-2", None), war("a", "w1", "vm-1", None)];
        let j = get_output(&two, false, Output::Json, true, now).unwrap();
        let list: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["items"][0]["metadata"]["name"], "w1");
        assert_eq!(list["items"][1]["metadata"]["name"], "w2");
        let y = get_output(&two, false, Output::Yaml, true, now).unwrap();
        let list: serde_json::Value = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
        // An empty list is still a list, as kubectl prints it.
        let j = get_output(&[], false, Output::Json, true, now).unwrap();
        let list: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(list["items"], serde_json::json!([]));
        assert_eq!(
            get_output(&two, false, Output::Name, true, now).unwrap(),
            "workloadautoregistration.runtime.onboarding.tetrate.io/w1\n\
             workloadautoregistration.runtime.onboarding.tetrate.io/w2\n"
        );
    }

    #[derive(Debug)]
    struct Outer {
        source: std::io::Error,
    }
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read /etc/x.yaml: {}", self.source)
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[derive(Debug)]
    struct Wrapper(Outer);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("loading the configuration")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_chain_prints_each_cause_once() {
        let e = Outer {
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(error_chain(&e), "cannot read /etc/x.yaml: no such file");
        // A cause the message does not quote is still printed, and its own cause once.
        let wrapped = Wrapper(e);
        assert_eq!(
            error_chain(&wrapped),
            "loading the configuration: cannot read /etc/x.yaml: no such file"
        );
    }

    #[test]
    fn words_like_kubectl() {
        assert_eq!(words("instanceId"), "Instance Id");
        assert_eq!(words("connectedOver"), "Connected Over");
        assert_eq!(words("app.kubernetes.io/name"), "app.kubernetes.io/name");
    }
}
