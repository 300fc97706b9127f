//! The sidecar's boot files, rendered from a WorkloadGroup snapshot.
//!
//! `proxy_config` computes what `istioctl x workload entry configure` computes (plus our
//! deliberate fixes, docs/bootstrap.md); `goyaml` writes `mesh.yaml` the way istioctl's Go YAML
//! library does; `manifest` says which files exist, where they go on the VM and from which
//! Tera template. Rendering is pure: inputs in, [`Bootstrap`] out. `offline` is the
//! `onboarding-endpoint render` command, the file-writing shell around it.

pub mod goyaml;
pub mod manifest;
pub mod proxy_config;
#[cfg(feature = "endpoint")]
mod read;
pub mod sinks;

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::api::istio::Sidecar;
use crate::api::meta::Labels;
use crate::api::protocol::{Bootstrap, BootstrapFile, FileMode};
use crate::api::registration::WorkloadGroupSnapshot;

pub use manifest::{FileSpec, TemplateDir, TemplateSet};
pub use proxy_config::{Computed, compute, hosts_file, parse_gateway};

pub const DEFAULT_ISTIO_NAMESPACE: &str = "istio-system";
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// An input (mesh config, WorkloadGroup annotation, flag) is not usable.
    #[error("{what}: {message}")]
    Input { what: String, message: String },
    /// The template manifest or a template file is wrong.
    #[error("{}: {message}", file.display())]
    Templates { file: PathBuf, message: String },
    /// A template failed to parse or render.
    #[error("template {template} ({origin}): {message}")]
    Render {
        template: String,
        origin: String,
        message: String,
    },
}

/// The address the workload is reached at (`ISTIO_SVC_IP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceIp {
    /// Reachable inside the network (istioctl `--internalIP`).
    Internal(String),
    /// A public address (istioctl `--externalIP`): health probes then go to localhost.
    External(String),
}

/// How the VM reaches istiod: the east-west gateway exposing istiod's 15012.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gateway {
    Ip(IpAddr),
    /// Only a DNS name is known (e.g. a cloud load balancer): the agent resolves it on the VM.
    Hostname(String),
}

/// Traffic interception on the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterceptionMode {
    /// No iptables (workload onboarding's mode, spec/001): explicit listeners only.
    #[default]
    None,
    /// iptables REDIRECT, as istioctl's output assumes.
    Redirect,
}

impl InterceptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::None => "NONE",
            InterceptionMode::Redirect => "REDIRECT",
        }
    }
}

/// Everything a render needs. Plain data: the caller fetched it (store, flags, files).
/// `Debug` leaves out the istio-token (a bearer credential).
#[derive(Clone)]
pub struct BootstrapInput<'a> {
    pub workload_group: &'a WorkloadGroupSnapshot,
    /// The parsed MeshConfig (ConfigMap `istio[-<rev>]`, key `mesh`); `Null` if there is none.
    pub mesh_config: &'a Value,
    pub root_cert: &'a str,
    pub istio_token: &'a str,
    pub istio_token_expires_at: Option<String>,
    pub revision: Option<&'a str>,
    pub cluster_id: &'a str,
    pub istio_namespace: &'a str,
    /// Used when the mesh config has no `trustDomain`; `cluster.local` when this is `None` too.
    pub trust_domain: Option<&'a str>,
    pub instance_ip: Option<InstanceIp>,
    pub istiod_gateway: Option<Gateway>,
    /// Labels the agent reported; added to the group's, never overriding them.
    pub agent_labels: &'a Labels,
    /// The WorkloadEntry registered for this workload (`ISTIO_META_WORKLOAD_ENTRY`).
    pub workload_entry_name: Option<&'a str>,
    /// The Sidecar selecting this workload: its egress hostnames become hosts entries.
    pub sidecar: Option<&'a Sidecar>,
    pub interception_mode: InterceptionMode,
    /// istioctl's `--capture-dns` (default true): `ISTIO_META_DNS_CAPTURE=true`.
    pub dns_capture: bool,
}

impl std::fmt::Debug for BootstrapInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field is listed, so a new one is a compile error here rather than a silent
        // omission (the destructuring has no `..`).
        let BootstrapInput {
            workload_group,
            mesh_config,
            root_cert,
            istio_token: _,
            istio_token_expires_at,
            revision,
            cluster_id,
            istio_namespace,
            trust_domain,
            instance_ip,
            istiod_gateway,
            agent_labels,
            workload_entry_name,
            sidecar,
            interception_mode,
            dns_capture,
        } = self;
        f.debug_struct("BootstrapInput")
            .field("workload_group", workload_group)
            .field("mesh_config", mesh_config)
            .field("root_cert", root_cert)
            .field("istio_token", &"<redacted>")
            .field("istio_token_expires_at", istio_token_expires_at)
            .field("revision", revision)
            .field("cluster_id", cluster_id)
            .field("istio_namespace", istio_namespace)
            .field("trust_domain", trust_domain)
            .field("instance_ip", instance_ip)
            .field("istiod_gateway", istiod_gateway)
            .field("agent_labels", agent_labels)
            .field("workload_entry_name", workload_entry_name)
            .field("sidecar", sidecar)
            .field("interception_mode", interception_mode)
            .field("dns_capture", dns_capture)
            .finish()
    }
}

static NO_LABELS: Labels = Labels::new();
static NULL: Value = Value::Null;

impl<'a> BootstrapInput<'a> {
    /// Defaults as istioctl's: namespace `istio-system`, cluster `Kubernetes`, DNS capture on,
    /// and our interception mode NONE.
    pub fn new(workload_group: &'a WorkloadGroupSnapshot) -> Self {
        BootstrapInput {
            workload_group,
            mesh_config: &NULL,
            root_cert: "",
            istio_token: "",
            istio_token_expires_at: None,
            revision: None,
            cluster_id: DEFAULT_CLUSTER_ID,
            istio_namespace: DEFAULT_ISTIO_NAMESPACE,
            trust_domain: None,
            instance_ip: None,
            istiod_gateway: None,
            agent_labels: &NO_LABELS,
            workload_entry_name: None,
            sidecar: None,
            interception_mode: InterceptionMode::None,
            dns_capture: true,
        }
    }
}

/// Compiled templates and the manifest. Build once (at start, or when the operator
/// directory changes), render many times.
pub struct Renderer {
    tera: tera::Tera,
    files: Vec<FileSpec>,
    origins: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// The built-in templates only.
    pub fn builtin() -> Result<Self, BootstrapError> {
        Self::from_set(TemplateSet::builtin()?)
    }

    /// The built-ins with an operator's template directory (as data) laid over them. The
    /// endpoint's build adds `Renderer::new(Option<&Path>)`, which reads the directory first.
    pub fn with_overrides(overrides: Option<&TemplateDir>) -> Result<Self, BootstrapError> {
        match overrides {
            Some(dir) => Self::from_set(TemplateSet::with_overrides(dir)?),
            None => Self::builtin(),
        }
    }

    pub fn from_set(set: TemplateSet) -> Result<Self, BootstrapError> {
        let mut tera = tera::Tera::new();
        // None of these files is HTML; never escape.
        tera.autoescape_on(Vec::<&str>::new());
        tera.register_filter(
            "shell_quote",
            |s: &str, _: tera::Kwargs, _: &tera::State| sinks::shell_quote(s),
        );
        let mut origins = std::collections::BTreeMap::new();
        // Only the templates the manifest uses are compiled (plus what they include, which
        // must then be in the set too).
        for (name, (src, origin)) in &set.templates {
            tera.add_raw_template(name, src)
                .map_err(|e| BootstrapError::Render {
                    template: name.clone(),
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
            origins.insert(name.clone(), origin.clone());
        }
        Ok(Renderer {
            tera,
            files: set.files,
            origins,
        })
    }

    pub fn files(&self) -> &[FileSpec] {
        &self.files
    }

    /// Renders every manifest file for `input`.
    pub fn render(&self, input: &BootstrapInput<'_>) -> Result<Bootstrap, BootstrapError> {
        let computed = compute(input)?;
        self.render_computed(input, &computed)
    }

    pub fn render_computed(
        &self,
        input: &BootstrapInput<'_>,
        c: &Computed,
    ) -> Result<Bootstrap, BootstrapError> {
        let context = tera::Context::from_serialize(&context_value(input, c)).map_err(|e| {
            BootstrapError::Render {
                template: "(context)".into(),
                origin: "built in".into(),
                message: e.to_string(),
            }
        })?;
        let mut files = Vec::with_capacity(self.files.len());
        for spec in &self.files {
            let content =
                self.tera
                    .render(&spec.template, &context)
                    .map_err(|e| BootstrapError::Render {
                        template: spec.template.clone(),
                        origin: self
                            .origins
                            .get(&spec.template)
                            .cloned()
                            .unwrap_or_default(),
                        message: e.to_string(),
                    })?;
            files.push(BootstrapFile {
                path: spec.path.clone(),
                mode: FileMode::new(spec.mode).map_err(|e| BootstrapError::Render {
                    template: spec.template.clone(),
                    origin: spec.path.clone(),
                    message: e.to_string(),
                })?,
                content,
                restart_on_change: spec.restart_on_change,
                owner: spec.owner.clone(),
            });
        }
        Ok(Bootstrap {
            files,
            hosts: c.hosts.clone(),
            istio_token_expires_at: input.istio_token_expires_at.clone(),
        })
    }
}

/// The Tera context. Values are precomputed so templates stay simple; operator templates
/// (a sidecar.env, an Envoy bootstrap) can use any of them. Listed in docs/bootstrap.md.
fn context_value(input: &BootstrapInput<'_>, c: &Computed) -> Value {
    let wg = input.workload_group;
    json!({
        "cluster_env_lines": c.cluster_env_lines,
        "cluster_env": c.cluster_env,
        "proxy_metadata": c.proxy_metadata,
        "proxy_config": c.default_config,
        "mesh_yaml": c.mesh_yaml,
        "root_cert": input.root_cert,
        "istio_token": input.istio_token,
        "workload_group": {
            "name": wg.name,
            "namespace": wg.namespace,
            "service_account": c.service_account,
        },
        "labels": c.labels,
        "canonical_service": c.canonical_service,
        "canonical_revision": c.canonical_revision,
        "revision": input.revision.unwrap_or_default(),
        "cluster_id": input.cluster_id,
        "istio_namespace": input.istio_namespace,
        "istiod_host": c.istiod_host,
        "istiod_address": c.istiod_address,
        "ca_address": c.ca_address,
        "trust_domain": c.trust_domain,
        "interception_mode": input.interception_mode.as_str(),
        "instance_ip": match &input.instance_ip {
            Some(InstanceIp::Internal(ip)) | Some(InstanceIp::External(ip)) => ip.as_str(),
            None => "",
        },
        "workload_entry_name": input.workload_entry_name.unwrap_or_default(),
        "hosts": c.hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio::{WorkloadEntrySpec, WorkloadGroupObjectMeta, WorkloadGroupSpec};

    fn snapshot() -> WorkloadGroupSnapshot {
        WorkloadGroupSnapshot {
            name: "ratings".into(),
            namespace: "bookinfo".into(),
            uid: None,
            resource_version: None,
            generation: None,
            labels: Labels::new(),
            annotations: Default::default(),
            spec: WorkloadGroupSpec {
                metadata: Some(WorkloadGroupObjectMeta {
                    labels: [("app".to_string(), "ratings".to_string())].into(),
                    annotations: Default::default(),
                }),
                template: WorkloadEntrySpec {
                    service_account: Some("bookinfo-ratings".into()),
                    ..Default::default()
                },
                probe: None,
            },
            taken_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn env_of(b: &Bootstrap) -> &str {
        &b.files
            .iter()
            .find(|f| f.path == "/var/lib/istio/envoy/cluster.env")
            .unwrap()
            .content
    }

    #[test]
    fn the_istio_token_never_shows_in_debug() {
        let wg = snapshot();
        let mut input = BootstrapInput::new(&wg);
        input.istio_token = "eyJ.secret-part.sig";
        input.root_cert = "ROOT";
        let shown = format!("{input:?}");
        assert!(!shown.contains("secret-part"), "{shown}");
        assert!(shown.contains("istio_token: \"<redacted>\""), "{shown}");
        assert!(shown.contains("ROOT"), "the rest stays visible: {shown}");
    }

    #[test]
    fn a_registered_entry_drops_auto_register_group_from_the_mesh_and_annotations() {
        let mut wg = snapshot();
        if let Some(m) = wg.spec.metadata.as_mut() {
            m.annotations.insert(
                "proxy.istio.io/config".into(),
                "proxyMetadata: {ISTIO_META_AUTO_REGISTER_GROUP: from-annotation}".into(),
            );
        }
        let mesh = serde_json::json!({
            "defaultConfig": {"proxyMetadata": {"ISTIO_META_AUTO_REGISTER_GROUP": "ratings"}}
        });
        let mut input = BootstrapInput::new(&wg);
        input.mesh_config = &mesh;
        // Offline (no registered entry) the key is kept, as istioctl keeps it.
        let offline = compute(&input).unwrap();
        assert!(
            offline
                .cluster_env_text
                .contains("\nISTIO_META_AUTO_REGISTER_GROUP='from-annotation'\n"),
            "{}",
            offline.cluster_env_text
        );
        input.workload_entry_name = Some("ratings-jwt-corp-vm-0001");
        let c = compute(&input).unwrap();
        assert!(
            !c.cluster_env_text.contains("AUTO_REGISTER_GROUP"),
            "{}",
            c.cluster_env_text
        );
        assert!(
            !c.mesh_yaml.contains("AUTO_REGISTER_GROUP"),
            "{}",
            c.mesh_yaml
        );
        assert!(
            c.cluster_env_text
                .contains("\nISTIO_META_WORKLOAD_ENTRY='ratings-jwt-corp-vm-0001'\n"),
            "{}",
            c.cluster_env_text
        );
    }

    #[test]
    fn renders_files_with_paths_and_modes() {
        let wg = snapshot();
        let mut input = BootstrapInput::new(&wg);
        input.root_cert = "ROOT";
        input.istio_token = "TOKEN";
        input.istio_token_expires_at = Some("2026-01-01T01:00:00Z".into());
        let b = Renderer::builtin().unwrap().render(&input).unwrap();
        let paths: Vec<_> = b
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.mode.bits(), f.restart_on_change))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("/var/lib/istio/envoy/cluster.env", 0o644, true),
                ("/etc/istio/config/mesh", 0o644, true),
                ("/etc/certs/root-cert.pem", 0o644, true),
                ("/var/run/secrets/tokens/istio-token", 0o600, false),
            ]
        );
        assert_eq!(b.files[2].content, "ROOT");
        assert_eq!(b.files[3].content, "TOKEN");
        assert_eq!(
            b.istio_token_expires_at.as_deref(),
            Some("2026-01-01T01:00:00Z")
        );
        assert!(b.hosts.is_empty());
    }

    #[test]
    fn fixes_are_applied_by_default() {
        let wg = snapshot();
        let input = BootstrapInput::new(&wg);
        let b = Renderer::builtin().unwrap().render(&input).unwrap();
        let env = env_of(&b);
        assert!(
            env.contains("\nCA_ADDR='istiod.istio-system.svc:15012'\n"),
            "{env}"
        );
        assert!(env.contains("\nTRUST_DOMAIN='cluster.local'\n"), "{env}");
        assert!(
            env.contains("\nISTIO_META_INTERCEPTION_MODE='NONE'\n"),
            "{env}"
        );
        assert!(env.contains("\nISTIO_CUSTOM_IP_TABLES='true'\n"), "{env}");
        // Custom Istio namespace: the CA address follows it.
        let mut input = BootstrapInput::new(&wg);
        input.istio_namespace = "mesh-system";
        input.trust_domain = Some("example.org");
        input.interception_mode = InterceptionMode::Redirect;
        let b = Renderer::builtin().unwrap().render(&input).unwrap();
        let env = env_of(&b);
        assert!(
            env.contains("\nCA_ADDR='istiod.mesh-system.svc:15012'\n"),
            "{env}"
        );
        assert!(env.contains("\nTRUST_DOMAIN='example.org'\n"), "{env}");
        assert!(!env.contains("INTERCEPTION_MODE"), "{env}");
        assert!(!env.contains("ISTIO_CUSTOM_IP_TABLES"), "{env}");
        // The mesh's own trustDomain wins over the fallback.
        let mesh = json!({"trustDomain": "mesh.example"});
        input.mesh_config = &mesh;
        let env = env_of(&Renderer::builtin().unwrap().render(&input).unwrap()).to_string();
        assert!(env.contains("\nTRUST_DOMAIN='mesh.example'\n"), "{env}");
    }

    #[test]
    fn hostname_gateway_becomes_an_agent_resolved_entry() {
        let wg = snapshot();
        let mut input = BootstrapInput::new(&wg);
        input.istiod_gateway = Some(parse_gateway("lb-1.elb.example").unwrap());
        let b = Renderer::builtin().unwrap().render(&input).unwrap();
        assert_eq!(b.hosts.len(), 1);
        assert_eq!(b.hosts[0].ip, "");
        assert_eq!(b.hosts[0].hostnames, vec!["istiod.istio-system.svc"]);
        assert_eq!(b.hosts[0].resolve.as_deref(), Some("lb-1.elb.example"));
        // The agent reaches istiod by its service name, so the SAN check keeps working.
        let mesh = &b.files[1].content;
        assert!(!mesh.contains("discoveryAddress"), "{mesh}");
    }

    #[test]
    fn template_errors_name_the_template() {
        let mut set = TemplateSet::builtin().unwrap();
        set.templates.insert(
            "cluster.env.tera".into(),
            (
                "{{ no_such_variable }}".into(),
                "DIR/cluster.env.tera".into(),
            ),
        );
        let r = Renderer::from_set(set).unwrap();
        let wg = snapshot();
        let err = r.render(&BootstrapInput::new(&wg)).unwrap_err().to_string();
        assert!(
            err.contains("cluster.env.tera") && err.contains("DIR/cluster.env.tera"),
            "{err}"
        );

        let mut set = TemplateSet::builtin().unwrap();
        set.templates.insert(
            "mesh.yaml.tera".into(),
            ("{% for %}".into(), "DIR/mesh.yaml.tera".into()),
        );
        let err = Renderer::from_set(set).unwrap_err().to_string();
        assert!(err.contains("DIR/mesh.yaml.tera"), "{err}");
    }

    fn with_proxy_config(annotation: &str) -> WorkloadGroupSnapshot {
        let mut wg = snapshot();
        wg.annotations.insert(
            proxy_config::ANNOTATION_PROXY_CONFIG.into(),
            annotation.into(),
        );
        wg
    }

    #[test]
    fn a_proxy_metadata_key_that_is_no_variable_name_refuses_the_resource() {
        let r = Renderer::builtin().unwrap();
        let wg = with_proxy_config("proxyMetadata:\n  OK: v\n  \"X=1;touch /tmp/p;Y\": v\n");
        let err = r.render(&BootstrapInput::new(&wg)).unwrap_err().to_string();
        assert!(
            err.contains("WorkloadGroup bookinfo/ratings metadata.annotations[proxy.istio.io/config]: proxyMetadata")
                && err.contains("\"X=1;touch /tmp/p;Y\"")
                && err.contains("not a valid environment variable name"),
            "{err}"
        );
        // The check a store can run when it loads the group says the same.
        let at_load = proxy_config::check_workload_group(&wg)
            .unwrap_err()
            .to_string();
        assert_eq!(at_load, err);
        assert!(proxy_config::check_workload_group(&snapshot()).is_ok());
        // The same from the mesh config's defaultConfig.
        let wg = snapshot();
        let mesh = json!({"defaultConfig": {"proxyMetadata": {"A-B": "v"}}});
        let mut input = BootstrapInput::new(&wg);
        input.mesh_config = &mesh;
        let err = r.render(&input).unwrap_err().to_string();
        assert!(
            err.contains("mesh config defaultConfig.proxyMetadata") && err.contains("\"A-B\""),
            "{err}"
        );
        // A NUL cannot reach a shell variable intact: refused, naming the key.
        let mesh = json!({"defaultConfig": {"proxyMetadata": {"A": "x\u{0}y"}}});
        input.mesh_config = &mesh;
        let err = r.render(&input).unwrap_err().to_string();
        assert!(
            err.contains("proxyMetadata.A") && err.contains("NUL"),
            "{err}"
        );
    }

    #[test]
    fn hostile_names_that_reach_istiods_host_name_are_refused() {
        let r = Renderer::builtin().unwrap();
        let wg = snapshot();
        let mut input = BootstrapInput::new(&wg);
        input.revision = Some("x\n8.8.8.8 bank.example");
        let err = r.render(&input).unwrap_err().to_string();
        assert!(err.starts_with("revision: "), "{err}");
        let mut input = BootstrapInput::new(&wg);
        input.istio_namespace = "istio system";
        let err = r.render(&input).unwrap_err().to_string();
        assert!(err.starts_with("Istio namespace: "), "{err}");
    }

    /// Values an attacker would try on a shell, a YAML reader or a JSON reader.
    const HOSTILE: &[&str] = &[
        "$(touch pwned-subst)",
        "`touch pwned-backtick`",
        "'; touch pwned-quote; '",
        "\"; touch pwned-dquote; \"",
        "x\ntouch pwned-newline\n",
        "a\\",
        "w\\",
        "\\w",
        "$HOME ${HOME} ~ * ?",
        "!! & | > < ; #",
        "it's",
        "\r\t\u{7}\u{1b}[31m",
        "key: value",
        "- item",
        "&anchor *alias !tag {flow} [seq] %dir @at",
        "---\n...",
        "true",
        "",
        " lead and trail ",
        "\u{2028}\u{85}\u{feff}é😀",
        "</script><b>&amp;",
    ];

    fn hostile_input_group() -> WorkloadGroupSnapshot {
        let mut md = serde_json::Map::new();
        for (i, v) in HOSTILE.iter().enumerate() {
            md.insert(format!("HOSTILE_{i}"), Value::String(v.to_string()));
        }
        // Hostile keys outside proxyMetadata only reach mesh.yaml (as ProxyConfig fields).
        let annotation = json!({
            "proxyMetadata": md,
            "key: value\n- x": "&a *b",
            "custom": {"! tag": HOSTILE},
        });
        with_proxy_config(&annotation.to_string())
    }

    fn hostile_labels() -> Labels {
        HOSTILE
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("l{i}"), v.to_string()))
            .collect()
    }

    #[test]
    fn cluster_env_sourced_by_sh_runs_nothing_and_round_trips() {
        let wg = hostile_input_group();
        let labels = hostile_labels();
        let mut input = BootstrapInput::new(&wg);
        input.agent_labels = &labels;
        input.instance_ip = Some(InstanceIp::Internal("$(touch pwned-ip)".into()));
        let r = Renderer::builtin().unwrap();
        let c = compute(&input).unwrap();
        let b = r.render_computed(&input, &c).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env_path = dir.path().join("cluster.env");
        std::fs::write(&env_path, env_of(&b)).unwrap();
        // As istio-start.sh does: auto-export, source, then print the environment NUL-separated.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("set -a; . ./cluster.env; set +a; env -0")
            .current_dir(dir.path())
            .env_clear()
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(created, ["cluster.env"], "the shell ran a command");
        let env: std::collections::BTreeMap<String, String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|e| !e.is_empty())
            .filter_map(|e| {
                let e = String::from_utf8(e.to_vec()).unwrap();
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        for (k, v) in &c.cluster_env {
            assert_eq!(env.get(k), Some(v), "{k} did not round-trip");
        }
        for (i, v) in HOSTILE.iter().enumerate() {
            assert_eq!(env[&format!("HOSTILE_{i}")], *v);
        }
        // The labels' JSON is JSON after the shell, with every hostile value intact.
        let json: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&env["ISTIO_METAJSON_LABELS"]).unwrap();
        for (k, v) in &labels {
            assert_eq!(&json[k], v);
        }
    }

    #[test]
    fn mesh_yaml_reads_back_as_what_was_meant() {
        let wg = hostile_input_group();
        let labels = hostile_labels();
        let mut input = BootstrapInput::new(&wg);
        input.agent_labels = &labels;
        let c = compute(&input).unwrap();
        let back: Value = crate::yaml::from_str(std::path::Path::new("mesh.yaml"), &c.mesh_yaml)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.mesh_yaml));
        assert_eq!(
            back,
            json!({"defaultConfig": c.default_config}),
            "{}",
            c.mesh_yaml
        );
        assert_eq!(back["defaultConfig"]["key: value\n- x"], "&a *b");
        assert_eq!(back["defaultConfig"]["custom"]["! tag"], json!(HOSTILE));
    }

    #[test]
    fn nothing_is_html_escaped() {
        // Autoescaping is off for every template, whatever its name: these are not HTML.
        let mut set = TemplateSet::builtin().unwrap();
        set.templates.insert(
            "page.html".into(),
            ("{{ root_cert }}|{{ istio_token }}".into(), "test".into()),
        );
        set.files.push(FileSpec {
            name: "page.html".into(),
            template: "page.html".into(),
            path: "/tmp/page.html".into(),
            mode: 0o644,
            restart_on_change: false,
            owner: None,
        });
        let r = Renderer::from_set(set).unwrap();
        let wg = with_proxy_config("proxyMetadata:\n  A: \"<b>&'\\\"x\\\"\"\n");
        let mut input = BootstrapInput::new(&wg);
        input.root_cert = "<&>\"'";
        input.istio_token = "a&b<c>";
        let b = r.render(&input).unwrap();
        assert!(
            env_of(&b).starts_with("A='<b>&'\"'\"'\"x\"'\n"),
            "{}",
            env_of(&b)
        );
        assert_eq!(b.files[2].content, "<&>\"'");
        assert_eq!(b.files[3].content, "a&b<c>");
        assert_eq!(b.files[4].content, "<&>\"'|a&b<c>");
    }

    #[test]
    fn shell_quote_filter_for_operator_templates() {
        let mut set = TemplateSet::builtin().unwrap();
        set.templates.insert(
            "cluster.env.tera".into(),
            (
                "NAME={{ workload_group.name | shell_quote }}\nX={{ \"it's\" | shell_quote }}\n"
                    .into(),
                "test".into(),
            ),
        );
        let r = Renderer::from_set(set).unwrap();
        let wg = snapshot();
        let b = r.render(&BootstrapInput::new(&wg)).unwrap();
        assert_eq!(env_of(&b), "NAME='ratings'\nX='it'\"'\"'s'\n");
    }
}
