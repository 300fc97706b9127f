//! Validates resources against Istio's real CRD schemas (testdata/schemas/istio).
//!
//! A CRD's `openAPIV3Schema` is OpenAPI 3.0; JSON Schema draft 4 is the closest dialect the
//! `jsonschema` crate has. A small pre-pass makes draft 4 enforce what the API server would:
//! `nullable` becomes a `null` type, `x-kubernetes-int-or-string` an anyOf, and objects that
//! list `properties` (and do not preserve unknown fields) refuse extra keys, since the API
//! server would prune them and we would silently lose data. CEL rules
//! (`x-kubernetes-validations`) are not evaluated; the one on WorkloadEntry (address or
//! network required) is checked by hand in `validate_workload_entry`.

#![allow(dead_code)]

use std::path::Path;

use serde_json::{Value, json};

pub fn spec_schema(crd_file: &str, version: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/schemas/istio")
        .join(crd_file);
    let text = std::fs::read_to_string(&path).expect("CRD file");
    let crd: Value = serde_saphyr::from_str(&text).expect("CRD yaml");
    let versions = crd["spec"]["versions"].as_array().expect("versions");
    let v = versions
        .iter()
        .find(|v| v["name"] == version)
        .expect("CRD version");
    let mut spec = v["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    openapi_to_draft4(&mut spec);
    spec
}

fn openapi_to_draft4(v: &mut Value) {
    if let Value::Object(m) = v {
        if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            m.insert(
                "anyOf".into(),
                json!([{"type": "integer"}, {"type": "string"}]),
            );
        }
        if m.remove("nullable") == Some(Value::Bool(true))
            && let Some(Value::String(t)) = m.get("type").cloned()
        {
            m.insert("type".into(), json!([t, "null"]));
        }
        let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if m.contains_key("properties") && !preserve && !m.contains_key("additionalProperties") {
            m.insert("additionalProperties".into(), Value::Bool(false));
        }
        for (_, child) in m.iter_mut() {
            openapi_to_draft4(child);
        }
    } else if let Value::Array(items) = v {
        for i in items {
            openapi_to_draft4(i);
        }
    }
}

/// Errors of `doc.spec` against the WorkloadEntry v1 schema (empty = valid).
pub fn validate_workload_entry(doc: &Value) -> Vec<String> {
    let schema = spec_schema("workloadentries.networking.istio.io.yaml", "v1");
    let validator = jsonschema::draft4::new(&schema).expect("schema compiles");
    let spec = &doc["spec"];
    let mut errors: Vec<String> = validator
        .iter_errors(spec)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if spec.get("address").is_none() && spec.get("network").is_none() {
        errors.push("Address is required (CEL rule)".into());
    }
    if doc["apiVersion"] != "networking.istio.io/v1" || doc["kind"] != "WorkloadEntry" {
        errors.push(format!(
            "apiVersion/kind {} {}",
            doc["apiVersion"], doc["kind"]
        ));
    }
    errors
}
