//! `onboarding-endpoint render`: the offline equivalent of `istioctl x workload entry
//! configure -f workloadgroup.yaml -o DIR`. Reads the inputs from files and flags, renders with
//! the same code the endpoint uses, and writes each file into DIR under its manifest name,
//! plus `hosts`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use workload_onboarding::api::istio::{WorkloadGroup, is_networking_api_version};
use workload_onboarding::api::meta::Labels;
use workload_onboarding::api::registration::WorkloadGroupSnapshot;
use workload_onboarding::bootstrap::{
    self, BootstrapInput, DEFAULT_CLUSTER_ID, DEFAULT_ISTIO_NAMESPACE, InstanceIp,
    InterceptionMode, Renderer, hosts_file, parse_gateway,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InterceptionArg {
    /// No iptables: explicit Sidecar listeners only (workload onboarding's mode).
    None,
    /// iptables REDIRECT, like istioctl's output.
    Redirect,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// The WorkloadGroup YAML.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Output directory (created if missing).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// The mesh config: a MeshConfig YAML (what ConfigMap `istio`, key `mesh`, holds), or that
    /// ConfigMap itself.
    #[arg(long = "mesh-config")]
    pub mesh_config: Option<PathBuf>,
    /// Istio control-plane revision (`default` or empty means none).
    #[arg(long)]
    pub revision: Option<String>,
    /// `ISTIO_META_CLUSTER_ID`.
    #[arg(long = "cluster-id", default_value = DEFAULT_CLUSTER_ID)]
    pub cluster_id: String,
    /// The workload's address inside the network (`ISTIO_SVC_IP`).
    #[arg(long = "internal-ip", conflicts_with = "external_ip")]
    pub internal_ip: Option<String>,
    /// The workload's public address (`ISTIO_SVC_IP`; probes then go to localhost).
    #[arg(long = "external-ip")]
    pub external_ip: Option<String>,
    /// The east-west gateway in front of istiod: an IP, or a DNS name the agent resolves.
    #[arg(long = "ingress-ip")]
    pub ingress_ip: Option<String>,
    /// The mesh's root certificate (PEM), copied verbatim.
    #[arg(long = "root-cert")]
    pub root_cert: Option<PathBuf>,
    /// The istio-token (a service-account JWT with audience istio-ca), copied verbatim.
    #[arg(long)]
    pub token: Option<PathBuf>,
    /// The namespace istiod runs in.
    #[arg(long = "istio-namespace", default_value = DEFAULT_ISTIO_NAMESPACE)]
    pub istio_namespace: String,
    /// Trust domain when the mesh config sets none (default cluster.local).
    #[arg(long = "trust-domain")]
    pub trust_domain: Option<String>,
    /// A directory whose manifest.yaml and *.tera override or add to the built-in templates.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// How the sidecar captures traffic (`ISTIO_META_INTERCEPTION_MODE`).
    #[arg(long = "interception-mode", value_enum, default_value = "none")]
    pub interception_mode: InterceptionArg,
}

pub fn run(args: &RenderArgs) -> anyhow::Result<()> {
    let wg = read_workload_group(&args.file)?;
    let mesh = match &args.mesh_config {
        Some(p) => read_mesh_config(p)?,
        None => Value::Null,
    };
    let root_cert = read_optional(args.root_cert.as_deref(), "root certificate")?;
    let token = read_optional(args.token.as_deref(), "istio-token")?;
    let instance_ip = match (&args.internal_ip, &args.external_ip) {
        (Some(_), Some(_)) => bail!("--internal-ip and --external-ip are mutually exclusive"),
        (Some(ip), None) => Some(InstanceIp::Internal(ip.clone())),
        (None, Some(ip)) => Some(InstanceIp::External(ip.clone())),
        (None, None) => None,
    };
    let gateway = args
        .ingress_ip
        .as_deref()
        .map(parse_gateway)
        .transpose()
        .context("--ingress-ip")?;
    let renderer = Renderer::new(args.templates.as_deref())?;
    let labels = Labels::new();
    let mut input = BootstrapInput::new(&wg);
    input.mesh_config = &mesh;
    input.root_cert = &root_cert;
    input.istio_token = &token;
    input.revision = args.revision.as_deref();
    input.cluster_id = &args.cluster_id;
    input.istio_namespace = &args.istio_namespace;
    input.trust_domain = args.trust_domain.as_deref();
    input.instance_ip = instance_ip;
    input.istiod_gateway = gateway;
    input.agent_labels = &labels;
    input.interception_mode = match args.interception_mode {
        InterceptionArg::None => InterceptionMode::None,
        InterceptionArg::Redirect => InterceptionMode::Redirect,
    };
    let computed = bootstrap::compute(&input)?;
    let bootstrap = renderer.render_computed(&input, &computed)?;
    let mut notes = computed.warnings.clone();
    notes.extend(missing_input_notes(
        args,
        &wg.namespace,
        &computed.service_account,
    ));
    for (spec, file) in renderer.files().iter().zip(&bootstrap.files) {
        if file.content.is_empty() {
            // Written all the same, as istioctl does (its own goldens hold an empty token),
            // so the directory always has the same files; but never without a word: an empty
            // root-cert.pem or istio-token copied to a VM fails later, far from the cause.
            notes.push(format!(
                "{} is empty: fill it before the files go to a VM",
                spec.name
            ));
        }
        let dest = args.output.join(&spec.name);
        workload_onboarding::atomic::write_file(&dest, file.content.as_bytes(), file.mode.bits())?;
    }
    // Written even when empty, as istioctl does: an empty hosts file is a valid answer.
    let hosts = hosts_file(&bootstrap.hosts);
    if hosts.is_empty() {
        notes.push(format!(
            "hosts is empty: no --ingress-ip was given, so the VM must resolve {} some other way",
            computed.istiod_host
        ));
    }
    workload_onboarding::atomic::write_file(&args.output.join("hosts"), hosts.as_bytes(), 0o644)?;
    for note in notes {
        eprintln!("render: {note}");
    }
    Ok(())
}

/// What `render` says on stderr when an input that has no default was not given. The files
/// that need it render empty (and `run` says which).
pub fn missing_input_notes(
    args: &RenderArgs,
    namespace: &str,
    service_account: &str,
) -> Vec<String> {
    let ns = &args.istio_namespace;
    let mut notes = Vec::new();
    if args.root_cert.is_none() {
        notes.push(format!(
            "no --root-cert: root-cert.pem is left empty; get the mesh's root certificate with \
             `kubectl get cm istio-ca-root-cert -n {ns} -o jsonpath='{{.data.root-cert\\.pem}}' > root-cert.pem` \
             and pass --root-cert root-cert.pem"
        ));
    }
    if args.token.is_none() {
        notes.push(format!(
            "no --token: istio-token is left empty; create a token with \
             `kubectl create token {service_account} -n {namespace} --audience istio-ca --duration 1h > istio-token` \
             and pass --token istio-token"
        ));
    }
    notes
}

fn read_optional(path: Option<&Path>, what: &str) -> anyhow::Result<String> {
    match path {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the {what} from {}", p.display())),
        None => Ok(String::new()),
    }
}

/// Reads a WorkloadGroup file. Like istioctl, an empty `serviceAccount` means `default`
/// (the renderer applies that).
pub fn read_workload_group(path: &Path) -> anyhow::Result<WorkloadGroupSnapshot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the WorkloadGroup {}", path.display()))?;
    let wg: WorkloadGroup = workload_onboarding::yaml::from_str(path, &text)?;
    if wg.kind != "WorkloadGroup" {
        bail!(
            "{}: kind is {:?}, expected WorkloadGroup",
            path.display(),
            wg.kind
        );
    }
    if !is_networking_api_version(&wg.api_version) {
        bail!(
            "{}: apiVersion {:?} is not networking.istio.io/v1, v1beta1 or v1alpha3",
            path.display(),
            wg.api_version
        );
    }
    if wg.metadata.name.is_empty() || wg.metadata.namespace.is_empty() {
        bail!(
            "{}: metadata.name and metadata.namespace are required",
            path.display()
        );
    }
    Ok(WorkloadGroupSnapshot {
        name: wg.metadata.name,
        namespace: wg.metadata.namespace,
        uid: wg.metadata.uid,
        resource_version: wg.metadata.resource_version,
        generation: wg.metadata.generation,
        labels: wg.metadata.labels,
        annotations: wg.metadata.annotations,
        spec: wg.spec,
        taken_at: String::new(),
    })
}

/// A MeshConfig YAML, or a ConfigMap holding one under `data.mesh`.
pub fn read_mesh_config(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the mesh config {}", path.display()))?;
    parse_mesh_config(path, &text)
}

/// A bare MeshConfig, the `istio[-<rev>]` ConfigMap as `kubectl get cm istio -n istio-system
/// -o yaml` (or `-o json`) prints it, or a `kind: List` holding that ConfigMap.
pub fn parse_mesh_config(path: &Path, text: &str) -> anyhow::Result<Value> {
    let v: Value = workload_onboarding::yaml::from_str(path, text)?;
    match v.get("kind").and_then(Value::as_str) {
        Some("ConfigMap") => mesh_of_configmap(path, &v),
        Some("List") | Some("ConfigMapList") => {
            let items = v.get("items").and_then(Value::as_array);
            let with_mesh: Vec<&Value> = items
                .into_iter()
                .flatten()
                .filter(|i| i.get("kind").and_then(Value::as_str) == Some("ConfigMap"))
                .filter(|i| i.pointer("/data/mesh").is_some())
                .collect();
            match with_mesh.as_slice() {
                [one] => mesh_of_configmap(path, one),
                [] => bail!(
                    "{}: the list holds no ConfigMap with data.mesh; pass ConfigMap istio \
                     (kubectl get cm istio -n istio-system -o yaml)",
                    path.display()
                ),
                many => bail!(
                    "{}: the list holds {} ConfigMaps with data.mesh ({}); pass only the one of \
                     your control plane's revision",
                    path.display(),
                    many.len(),
                    many.iter()
                        .map(|i| i
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or("?"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        Some(kind) if v.get("apiVersion").is_some() => bail!(
            "{}: a {kind} is not a mesh config; pass the MeshConfig YAML or ConfigMap istio \
             (kubectl get cm istio -n istio-system -o yaml)",
            path.display()
        ),
        _ => match v {
            Value::Null | Value::Object(_) => Ok(v),
            _ => bail!("{}: a mesh config must be a YAML map", path.display()),
        },
    }
}

fn mesh_of_configmap(path: &Path, cm: &Value) -> anyhow::Result<Value> {
    let name = cm
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let Some(mesh) = cm.pointer("/data/mesh") else {
        bail!(
            "{}: ConfigMap {name} has no data.mesh (the mesh config is ConfigMap istio[-<revision>] in the Istio namespace)",
            path.display()
        );
    };
    let Some(mesh) = mesh.as_str() else {
        bail!(
            "{}: ConfigMap {name} data.mesh must be a string",
            path.display()
        );
    };
    let inner = PathBuf::from(format!("{} (ConfigMap {name} data.mesh)", path.display()));
    let parsed: Value = workload_onboarding::yaml::from_str(&inner, mesh)?;
    match parsed {
        Value::Null | Value::Object(_) => Ok(parsed),
        _ => bail!(
            "{}: ConfigMap {name} data.mesh must hold a YAML map",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_config_from_configmap_or_plain() {
        let p = Path::new("m.yaml");
        let plain = parse_mesh_config(p, "trustDomain: a.example\n").unwrap();
        assert_eq!(plain["trustDomain"], "a.example");
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\ndata:\n  mesh: |-\n    trustDomain: b.example\n    defaultConfig:\n      discoveryAddress: x:15012\n";
        let v = parse_mesh_config(p, cm).unwrap();
        assert_eq!(v["trustDomain"], "b.example");
        assert_eq!(v["defaultConfig"]["discoveryAddress"], "x:15012");
        assert!(parse_mesh_config(p, "kind: ConfigMap\ndata: {}\n").is_err());
        assert!(parse_mesh_config(p, "- a\n").is_err());
    }

    #[test]
    fn workload_group_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wg.yaml");
        std::fs::write(
            &p,
            "kind: WorkloadGroup\nmetadata:\n  name: a\n  namespace: b\nspec:\n  template:\n    serviceAcount: x\n",
        )
        .unwrap();
        let err = format!("{:#}", read_workload_group(&p).unwrap_err());
        assert!(
            err.contains("wg.yaml:7") && err.contains("serviceAcount"),
            "{err}"
        );
    }
}
