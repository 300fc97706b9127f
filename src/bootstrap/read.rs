//! The one place `bootstrap` touches the disk, and only in the endpoint's build: reading an
//! operator's template directory into a [`TemplateDir`] for the pure
//! [`TemplateSet::with_overrides`]. The core-only build (`--no-default-features`) has none of it.

use std::path::Path;

use super::manifest::{MANIFEST_FILE, TEMPLATE_SUFFIX, TemplateDir};
use super::{BootstrapError, Renderer, TemplateSet};

impl TemplateDir {
    /// Reads `dir`: its `*.tera` files and its `manifest.yaml` (when there is one). Each
    /// error names the file or directory that could not be read.
    pub fn read(dir: &Path) -> Result<TemplateDir, BootstrapError> {
        let entries = std::fs::read_dir(dir).map_err(|e| BootstrapError::Templates {
            file: dir.to_path_buf(),
            message: format!("cannot read the template directory: {e}"),
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| BootstrapError::Templates {
                file: dir.to_path_buf(),
                message: e.to_string(),
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        // Read in name order, so that the first unreadable file reported is always the same.
        names.sort();
        let mut out = TemplateDir {
            dir: dir.to_path_buf(),
            ..TemplateDir::default()
        };
        for name in names.iter().filter(|n| n.ends_with(TEMPLATE_SUFFIX)) {
            let path = dir.join(name);
            let src = std::fs::read_to_string(&path).map_err(|e| BootstrapError::Templates {
                file: path.clone(),
                message: format!("cannot read template: {e}"),
            })?;
            out.templates.insert(name.clone(), src);
        }
        if names.iter().any(|n| n == MANIFEST_FILE) {
            let path = dir.join(MANIFEST_FILE);
            let text = std::fs::read_to_string(&path).map_err(|e| BootstrapError::Templates {
                file: path.clone(),
                message: format!("cannot read: {e}"),
            })?;
            out.manifest = Some(text);
        }
        Ok(out)
    }
}

impl Renderer {
    /// The built-ins with an operator directory laid over them (`None`: built-ins only): reads
    /// the directory, then hands it to the core as data.
    pub fn new(override_dir: Option<&Path>) -> Result<Self, BootstrapError> {
        match override_dir {
            Some(dir) => Self::from_set(TemplateSet::with_overrides(&TemplateDir::read(dir)?)?),
            None => Self::builtin(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_templates_and_manifest_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), "files: []\n").unwrap();
        std::fs::write(dir.path().join("a.tera"), "A").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a template").unwrap();
        let read = TemplateDir::read(dir.path()).unwrap();
        assert_eq!(read.dir, dir.path());
        assert_eq!(read.templates.len(), 1);
        assert_eq!(read.templates["a.tera"], "A");
        assert_eq!(read.manifest.as_deref(), Some("files: []\n"));

        std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(TemplateDir::read(dir.path()).unwrap().manifest, None);
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = TemplateDir::read(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("cannot read the template directory"), "{e}");
    }

    #[test]
    fn renderer_new_lays_the_directory_over_the_built_ins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml.tera"), "custom").unwrap();
        assert!(Renderer::new(Some(dir.path())).is_ok());
        assert!(Renderer::new(Some(&dir.path().join("nope"))).is_err());
    }
}
