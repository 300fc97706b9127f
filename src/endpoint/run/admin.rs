//! The operator's `get`, `describe` and `delete` on the configured store (file or
//! Kubernetes), with one runtime for the calls (a kube client's connection tasks live on the
//! runtime that made it). What to ask the store and what to print are decided here; the
//! binary parses the flags and writes the text.

use std::path::Path;
use std::time::SystemTime;

use super::{RunError, context, failed, file_store_config, no_store, usage};
use crate::api::registration::WorkloadAutoRegistration;
use crate::endpoint::cli;
use crate::endpoint::config::EndpointConfig;
use crate::store::Store;
use crate::store::file::FileStore;
use crate::store::kube::{self as kube_store, KubeStore};

/// The store as configured.
pub struct AdminStore {
    rt: tokio::runtime::Runtime,
    store: AnyStore,
}

enum AnyStore {
    File(FileStore),
    Kube(KubeStore),
}

impl AdminStore {
    /// Opens the store `cfg` (read from `config_path`) names.
    pub fn open(config_path: &Path, cfg: &EndpointConfig) -> Result<AdminStore, RunError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(context("cannot start the async runtime"))?;
        let store = match (&cfg.store.file, &cfg.store.kube) {
            (Some(f), _) => {
                let (store, _problems) =
                    FileStore::open(file_store_config(cfg, f)).map_err(failed)?;
                AnyStore::File(store)
            }
            (None, Some(k)) => {
                let client = rt.block_on(kube_store::client(k)).map_err(failed)?;
                AnyStore::Kube(KubeStore::new(client, k, &cfg.mesh.istio_namespace))
            }
            (None, None) => return Err(no_store(config_path)),
        };
        Ok(AdminStore { rt, store })
    }

    fn get_war(&self, ns: &str, name: &str) -> Result<Option<WorkloadAutoRegistration>, RunError> {
        self.rt
            .block_on(async {
                match &self.store {
                    AnyStore::File(s) => s.get_war(ns, name).await,
                    AnyStore::Kube(s) => s.get_war(ns, name).await,
                }
            })
            .map_err(failed)
    }

    fn list_wars(&self, ns: Option<&str>) -> Result<Vec<WorkloadAutoRegistration>, RunError> {
        self.rt
            .block_on(async {
                match &self.store {
                    AnyStore::File(s) => s.list_wars(ns).await,
                    AnyStore::Kube(s) => s.list_wars(ns).await,
                }
            })
            .map_err(failed)
    }

    fn delete_registration(&self, ns: &str, name: &str) -> Result<bool, RunError> {
        self.rt
            .block_on(async {
                match &self.store {
                    AnyStore::File(s) => s.delete_registration(ns, name).await,
                    AnyStore::Kube(s) => s.delete_registration(ns, name).await,
                }
            })
            .map_err(failed)
    }
}

/// The resource names the commands take: only WorkloadAutoRegistrations.
pub fn check_resource(r: &str) -> Result<(), RunError> {
    match r {
        "war" | "wars" | "workloadautoregistration" | "workloadautoregistrations" => Ok(()),
        other => Err(usage(format!(
            "unknown resource {other:?}: this tool manages `war` (WorkloadAutoRegistration)"
        ))),
    }
}

pub fn not_found(name: &str, namespace: &str) -> RunError {
    failed(format!(
        "workloadautoregistration {name:?} not found in namespace {namespace}"
    ))
}

/// What `get` asks for.
pub struct GetRequest {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub all_namespaces: bool,
    pub output: cli::Output,
}

/// What `get` prints: the text for stdout, or kubectl's "No resources found" for stderr.
#[derive(Debug, PartialEq)]
pub enum GetOutput {
    Stdout(String),
    Stderr(String),
}

/// The namespace `get` looks in (`None`: every namespace), refusing a name across all of
/// them as kubectl does.
pub fn get_namespace(req: &GetRequest) -> Result<Option<String>, RunError> {
    if req.name.is_some() && req.all_namespaces {
        return Err(usage(
            "a registration cannot be retrieved by name across all namespaces: give -n NAMESPACE instead of -A",
        ));
    }
    Ok(if req.all_namespaces {
        None
    } else {
        Some(req.namespace.clone().unwrap_or_else(|| "default".into()))
    })
}

/// `get` after the store answered: kubectl's "No resources found" for an empty table, else
/// the registrations in the asked format.
pub fn get_output(
    req: &GetRequest,
    ns: Option<&str>,
    wars: &[WorkloadAutoRegistration],
    now: SystemTime,
) -> Result<GetOutput, RunError> {
    let tabular = matches!(req.output, cli::Output::Table | cli::Output::Wide);
    if wars.is_empty() && tabular {
        return Ok(GetOutput::Stderr(match ns {
            Some(ns) => format!("No resources found in {ns} namespace."),
            None => "No resources found".into(),
        }));
    }
    cli::get_output(
        wars,
        req.name.is_some(),
        req.output,
        req.all_namespaces,
        now,
    )
    .map(GetOutput::Stdout)
    .map_err(context("cannot print the registrations"))
}

/// `get war [NAME]`.
pub fn get(store: &AdminStore, req: &GetRequest) -> Result<GetOutput, RunError> {
    let ns = get_namespace(req)?;
    let wars = match &req.name {
        Some(name) => {
            let ns = ns.as_deref().unwrap_or("default");
            match store.get_war(ns, name)? {
                Some(w) => vec![w],
                None => return Err(not_found(name, ns)),
            }
        }
        None => store.list_wars(ns.as_deref())?,
    };
    get_output(req, ns.as_deref(), &wars, SystemTime::now())
}

/// `describe war NAME`: the text to print.
pub fn describe(store: &AdminStore, namespace: &str, name: &str) -> Result<String, RunError> {
    match store.get_war(namespace, name)? {
        Some(w) => Ok(cli::describe(&w)),
        None => Err(not_found(name, namespace)),
    }
}

/// `delete war NAME`: the line to print.
pub fn delete(store: &AdminStore, namespace: &str, name: &str) -> Result<String, RunError> {
    if store.delete_registration(namespace, name)? {
        Ok(format!("workloadautoregistration \"{name}\" deleted\n"))
    } else {
        Err(not_found(name, namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: Option<&str>, namespace: Option<&str>, all: bool) -> GetRequest {
        GetRequest {
            name: name.map(str::to_string),
            namespace: namespace.map(str::to_string),
            all_namespaces: all,
            output: cli::Output::Table,
        }
    }

    #[test]
    fn get_looks_in_default_the_named_namespace_or_all() {
        assert_eq!(
            get_namespace(&req(None, None, false)).unwrap().as_deref(),
            Some("default")
        );
        assert_eq!(
            get_namespace(&req(None, Some("vms"), false))
                .unwrap()
                .as_deref(),
            Some("vms")
        );
        assert_eq!(get_namespace(&req(None, None, true)).unwrap(), None);
        let e = get_namespace(&req(Some("w"), None, true)).unwrap_err();
        assert!(e.is_usage());
        assert!(e.to_string().contains("across all namespaces"), "{e}");
    }

    #[test]
    fn an_empty_table_says_no_resources_on_stderr_other_formats_print() {
        let now = SystemTime::now();
        let r = req(None, None, false);
        assert_eq!(
            get_output(&r, Some("vms"), &[], now).unwrap(),
            GetOutput::Stderr("No resources found in vms namespace.".into())
        );
        assert_eq!(
            get_output(&r, None, &[], now).unwrap(),
            GetOutput::Stderr("No resources found".into())
        );
        let json = GetRequest {
            output: cli::Output::Json,
            ..req(None, None, false)
        };
        assert!(matches!(
            get_output(&json, Some("vms"), &[], now).unwrap(),
            GetOutput::Stdout(_)
        ));
    }

    #[test]
    fn only_wars_are_managed_and_a_missing_one_is_a_failure() {
        for r in [
            "war",
            "wars",
            "workloadautoregistration",
            "workloadautoregistrations",
        ] {
            assert!(check_resource(r).is_ok(), "{r}");
        }
        let e = check_resource("pods").unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("\"pods\""), "{e}");
        let e = not_found("w", "vms");
        assert!(!e.is_usage());
        assert_eq!(
            e.to_string(),
            "workloadautoregistration \"w\" not found in namespace vms"
        );
    }
}
