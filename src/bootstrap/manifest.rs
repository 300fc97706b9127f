//! `templates/manifest.yaml`: which files the sidecar gets, from which template, to which path
//! on the VM, with which mode. Data, not code: an operator directory can replace a built-in
//! template or add files (a `sidecar.env`, an Envoy bootstrap template for `ISTIO_BOOTSTRAP`)
//! without a rebuild.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::BootstrapError;

pub const MANIFEST_FILE: &str = "manifest.yaml";
pub const TEMPLATE_SUFFIX: &str = ".tera";

/// The templates shipped in the binary (templates/ in the repository).
const BUILTIN_MANIFEST: &str = include_str!("../../templates/manifest.yaml");
const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "cluster.env.tera",
        include_str!("../../templates/cluster.env.tera"),
    ),
    (
        "mesh.yaml.tera",
        include_str!("../../templates/mesh.yaml.tera"),
    ),
    (
        "root-cert.pem.tera",
        include_str!("../../templates/root-cert.pem.tera"),
    ),
    (
        "istio-token.tera",
        include_str!("../../templates/istio-token.tera"),
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ManifestDoc {
    files: Vec<FileSpec>,
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSpec {
    /// Short unique name: the key an override manifest uses to replace this entry, and the
    /// file name `onboarding-endpoint render` writes it under.
    pub name: String,
    /// Template file name (in the override directory, else built in).
    pub template: String,
    /// Absolute path on the VM.
    pub path: String,
    /// Permission bits, written as a quoted octal string (`"0644"`).
    #[serde(deserialize_with = "octal_mode")]
    pub mode: u32,
    /// Whether a change to this file needs a sidecar restart.
    #[serde(default = "yes")]
    pub restart_on_change: bool,
    /// User that must own the file on the VM (pilot-agent runs as `istio-proxy` and must be
    /// able to read the 0600 token). The agent applies it when it runs as root and the user
    /// exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

fn yes() -> bool {
    true
}

fn octal_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    parse_mode(&s).map_err(serde::de::Error::custom)
}

/// A file mode in a manifest that is not a permission in octal, or one the agent would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error("mode {0:?} is not a permission in octal: write it as a quoted string like \"0644\"")]
    NotOctal(String),
    #[error("mode {mode:?}: {reason}")]
    NotAllowed { mode: String, reason: String },
}

/// `"0644"`, `"644"`, `"0o600"` -> bits; anything else (or bits above 0777) is an error.
pub fn parse_mode(s: &str) -> Result<u32, ModeError> {
    let digits = s.trim().trim_start_matches("0o");
    let ok = !digits.is_empty() && digits.len() <= 4 && digits.chars().all(|c| c.is_digit(8));
    match u32::from_str_radix(digits, 8) {
        Ok(m) if ok && m <= 0o777 => crate::api::protocol::FileMode::new(m)
            .map(|_| m)
            // Refused when the manifest is loaded, not at every render: the agent would
            // refuse such a file anyway.
            .map_err(|e| ModeError::NotAllowed {
                mode: s.to_string(),
                reason: e.to_string(),
            }),
        _ => Err(ModeError::NotOctal(s.to_string())),
    }
}

/// An operator's template directory as data: what [`TemplateSet::with_overrides`] lays over
/// the built-ins. The endpoint's shell fills it from the disk (`TemplateDir::read`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateDir {
    /// Where it was read from: error messages name the files under it.
    pub dir: PathBuf,
    /// Every `*.tera` file of the directory: file name -> source text.
    pub templates: BTreeMap<String, String>,
    /// The text of its `manifest.yaml`, when it has one.
    pub manifest: Option<String>,
}

/// The manifest and the template sources it refers to, merged from the built-ins and an
/// optional operator directory.
#[derive(Debug, Clone)]
pub struct TemplateSet {
    pub files: Vec<FileSpec>,
    /// Template name -> (source text, where it came from: for error messages).
    pub templates: BTreeMap<String, (String, String)>,
}

impl TemplateSet {
    pub fn builtin() -> Result<Self, BootstrapError> {
        let origin = "templates/manifest.yaml (built in)";
        let doc = parse_manifest(Path::new(origin), BUILTIN_MANIFEST)?;
        let templates = BUILTIN_TEMPLATES
            .iter()
            .map(|(name, src)| {
                (
                    name.to_string(),
                    (src.to_string(), format!("templates/{name} (built in)")),
                )
            })
            .collect();
        let set = TemplateSet {
            files: doc.files,
            templates,
        };
        set.validate(origin)?;
        Ok(set)
    }

    /// The built-ins with an operator's template directory laid over them: every `*.tera`
    /// in it replaces or adds a template; entries of its `manifest.yaml` replace the built-in
    /// entry with the same `name` or are added after them. Pure: the directory comes as data
    /// (the shell reads it, see `TemplateDir::read`).
    pub fn with_overrides(overrides: &TemplateDir) -> Result<Self, BootstrapError> {
        let mut set = Self::builtin()?;
        for (name, src) in &overrides.templates {
            let origin = overrides.dir.join(name).display().to_string();
            set.templates.insert(name.clone(), (src.clone(), origin));
        }
        let manifest_path = overrides.dir.join(MANIFEST_FILE);
        if let Some(text) = &overrides.manifest {
            let doc = parse_manifest(&manifest_path, text)?;
            for spec in doc.files {
                match set.files.iter_mut().find(|f| f.name == spec.name) {
                    Some(existing) => *existing = spec,
                    None => set.files.push(spec),
                }
            }
        }
        set.validate(&manifest_path.display().to_string())?;
        Ok(set)
    }

    fn validate(&self, manifest: &str) -> Result<(), BootstrapError> {
        let err = |message: String| BootstrapError::Templates {
            file: PathBuf::from(manifest),
            message,
        };
        let mut names = Vec::new();
        let mut paths = Vec::new();
        for f in &self.files {
            if f.name.is_empty() || f.name.contains('/') || f.name == "." || f.name == ".." {
                return Err(err(format!(
                    "file name {:?} must be a plain file name (it is also the name `render` writes)",
                    f.name
                )));
            }
            if names.contains(&&f.name) {
                return Err(err(format!("file name {:?} is listed twice", f.name)));
            }
            names.push(&f.name);
            let p = Path::new(&f.path);
            if !p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
                || f.path.ends_with('/')
            {
                return Err(err(format!(
                    "file {:?}: path {:?} must be an absolute file path without `.` or `..`",
                    f.name, f.path
                )));
            }
            if paths.contains(&&f.path) {
                return Err(err(format!(
                    "file {:?}: path {:?} is used by another file",
                    f.name, f.path
                )));
            }
            paths.push(&f.path);
            if !self.templates.contains_key(&f.template) {
                return Err(err(format!(
                    "file {:?}: template {:?} is neither in the template directory nor built in",
                    f.name, f.template
                )));
            }
        }
        Ok(())
    }
}

fn parse_manifest(file: &Path, text: &str) -> Result<ManifestDoc, BootstrapError> {
    crate::yaml::from_str(file, text).map_err(|e| BootstrapError::Templates {
        file: file.to_path_buf(),
        message: match e.line {
            Some(l) => format!("line {l}: {}", e.message),
            None => e.message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_is_valid() {
        let set = TemplateSet::builtin().unwrap();
        let names: Vec<_> = set.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["cluster.env", "mesh.yaml", "root-cert.pem", "istio-token"]
        );
        let token = set.files.iter().find(|f| f.name == "istio-token").unwrap();
        assert_eq!(token.mode, 0o600);
        assert!(!token.restart_on_change);
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o755"), Ok(0o755));
        assert!(parse_mode("0688").is_err());
        assert!(parse_mode("1777").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("rw-r--r--").is_err());
        // Permissions the agent would refuse are refused when the manifest loads.
        let e = parse_mode("0666").unwrap_err().to_string();
        assert!(e.contains("write"), "{e}");
        assert!(parse_mode("0775").is_err());
        assert!(parse_mode("4755").is_err());
    }

    fn overrides(manifest: &str, files: &[(&str, &str)]) -> Result<TemplateSet, BootstrapError> {
        let dir = TemplateDir {
            dir: PathBuf::from("DIR"),
            templates: files
                .iter()
                .map(|(n, c)| (n.to_string(), c.to_string()))
                .collect(),
            manifest: Some(manifest.to_string()),
        };
        TemplateSet::with_overrides(&dir)
    }

    #[test]
    fn manifest_errors_name_the_file() {
        let e = overrides(
            "files:\n- name: sidecar.env\n  template: sidecar.env.tera\n  path: /var/lib/istio/envoy/sidecar.env\n  mdoe: \"0644\"\n",
            &[("sidecar.env.tera", "X=1\n")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("DIR/manifest.yaml"), "{e}");
        assert!(e.contains("line 5") && e.contains("mdoe"), "{e}");

        let e = overrides(
            "files:\n- name: sidecar.env\n  template: missing.tera\n  path: /var/lib/istio/envoy/sidecar.env\n  mode: \"0644\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("DIR/manifest.yaml") && e.contains("missing.tera"),
            "{e}"
        );

        let e = overrides(
            "files:\n- name: sidecar.env\n  template: s.tera\n  path: /x\n  mode: \"0999\"\n",
            &[("s.tera", "")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("DIR/manifest.yaml") && e.contains("0999"), "{e}");

        let e = overrides(
            "files:\n- name: extra\n  template: s.tera\n  path: /etc/istio/config/mesh\n  mode: \"0644\"\n",
            &[("s.tera", "")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("used by another file"), "{e}");

        let e = overrides(
            "files:\n- name: extra\n  template: s.tera\n  path: relative/path\n  mode: \"0644\"\n",
            &[("s.tera", "")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn override_replaces_by_name_and_adds() {
        let set = overrides(
            "files:\n- name: istio-token\n  template: istio-token.tera\n  path: /var/lib/istio/tokens/istio-token\n  mode: \"0600\"\n  restartOnChange: false\n- name: sidecar.env\n  template: sidecar.env.tera\n  path: /var/lib/istio/envoy/sidecar.env\n  mode: \"0644\"\n",
            &[("sidecar.env.tera", "X=1\n"), ("mesh.yaml.tera", "custom")],
        )
        .unwrap();
        let names: Vec<_> = set.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "cluster.env",
                "mesh.yaml",
                "root-cert.pem",
                "istio-token",
                "sidecar.env"
            ]
        );
        assert_eq!(set.files[3].path, "/var/lib/istio/tokens/istio-token");
        assert_eq!(set.templates["mesh.yaml.tera"].0, "custom");
    }
}
