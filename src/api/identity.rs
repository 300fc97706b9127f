//! The verified identity of a host, as recorded in a WorkloadAutoRegistration
//! (`spec.identity`, TSB `WorkloadIdentity`). Exactly one platform is set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum WorkloadIdentity {
    Aws(AwsIdentity),
    Jwt(JwtIdentity),
    Gcp(GcpIdentity),
    Azure(AzureIdentity),
}

impl WorkloadIdentity {
    /// The platform name used in metrics and logs.
    pub fn platform(&self) -> &'static str {
        match self {
            WorkloadIdentity::Aws(a) if a.ecs.is_some() => "aws-ecs",
            WorkloadIdentity::Aws(_) => "aws-ec2",
            WorkloadIdentity::Jwt(_) => "jwt",
            WorkloadIdentity::Gcp(_) => "gcp",
            WorkloadIdentity::Azure(_) => "azure",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsIdentity {
    pub partition: String,
    pub account: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Identity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ec2Identity {
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_role: Option<IamRole>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EcsIdentity {
    pub task_id: String,
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_role: Option<IamRole>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IamRole {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtIdentity {
    pub issuer: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcpIdentity {
    pub project_number: String,
    pub project_id: String,
    pub region: String,
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gce: Option<GceIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GceIdentity {
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureIdentity {
    pub subscription: String,
    pub resource_group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<AzureComputeIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureComputeIdentity {
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// One line for logs: the platform, then `field=value` pairs (`jwt issuer=https://idp
/// subject=vm-1`), never Rust's debug syntax. Values that are not plain words are quoted and
/// escaped, so a value from a credential cannot forge a log line.
impl std::fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.platform())?;
        let mut kv = |k: &str, v: &str| -> std::fmt::Result {
            if v.is_empty() {
                return Ok(());
            }
            let plain = v.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
            });
            if plain {
                write!(f, " {k}={v}")
            } else {
                write!(f, " {k}={v:?}")
            }
        };
        match self {
            WorkloadIdentity::Jwt(j) => {
                kv("issuer", &j.issuer)?;
                kv("subject", &j.subject)?;
                for (name, value) in &j.attributes {
                    kv(&format!("attributes.{}", name.escape_debug()), value)?;
                }
            }
            WorkloadIdentity::Aws(a) => {
                kv("partition", &a.partition)?;
                kv("account", &a.account)?;
                kv("region", &a.region)?;
                kv("zone", &a.zone)?;
                if let Some(e) = &a.ec2 {
                    kv("instanceId", &e.instance_id)?;
                    kv("iamRole", e.iam_role.as_ref().map_or("", |r| &r.name))?;
                }
                if let Some(e) = &a.ecs {
                    kv("cluster", &e.cluster)?;
                    kv("taskId", &e.task_id)?;
                    kv("iamRole", e.iam_role.as_ref().map_or("", |r| &r.name))?;
                }
            }
            WorkloadIdentity::Gcp(g) => {
                kv("projectId", &g.project_id)?;
                kv("projectNumber", &g.project_number)?;
                kv("region", &g.region)?;
                kv("zone", &g.zone)?;
                if let Some(c) = &g.gce {
                    kv("instanceId", &c.instance_id)?;
                    kv("instanceName", &c.instance_name)?;
                    kv("serviceAccount", &c.service_account)?;
                }
            }
            WorkloadIdentity::Azure(a) => {
                kv("subscription", &a.subscription)?;
                kv("resourceGroup", &a.resource_group)?;
                kv("location", &a.location)?;
                if let Some(c) = &a.compute {
                    kv("vmId", &c.instance_id)?;
                    kv("name", &c.name)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod display_tests {
    use super::*;

    #[test]
    fn identities_display_as_one_readable_line() {
        let jwt = WorkloadIdentity::Jwt(JwtIdentity {
            issuer: "https://idp.example/realms/vms".into(),
            subject: "vm-1".into(),
            attributes: [("region".to_string(), "us east".to_string())].into(),
        });
        assert_eq!(
            jwt.to_string(),
            r#"jwt issuer=https://idp.example/realms/vms subject=vm-1 attributes.region="us east""#
        );
        let ec2 = WorkloadIdentity::Aws(AwsIdentity {
            partition: "aws".into(),
            account: "123456789012".into(),
            region: "us-east-2".into(),
            zone: "us-east-2b".into(),
            ec2: Some(Ec2Identity {
                instance_id: "i-0abc".into(),
                iam_role: Some(IamRole { name: "web".into() }),
            }),
            ecs: None,
        });
        assert_eq!(
            ec2.to_string(),
            "aws-ec2 partition=aws account=123456789012 region=us-east-2 zone=us-east-2b instanceId=i-0abc iamRole=web"
        );
        let ecs = WorkloadIdentity::Aws(AwsIdentity {
            partition: "aws".into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            zone: String::new(),
            ec2: None,
            ecs: Some(EcsIdentity {
                task_id: "t1".into(),
                cluster: "prod".into(),
                iam_role: None,
            }),
        });
        assert_eq!(
            ecs.to_string(),
            "aws-ecs partition=aws account=123456789012 region=eu-west-1 cluster=prod taskId=t1"
        );
        let gcp = WorkloadIdentity::Gcp(GcpIdentity {
            project_number: "42".into(),
            project_id: "proj".into(),
            region: "us-central1".into(),
            zone: "us-central1-a".into(),
            gce: Some(GceIdentity {
                instance_id: "7".into(),
                instance_name: "vm-1".into(),
                service_account: "sa@proj.iam.gserviceaccount.com".into(),
            }),
        });
        assert_eq!(
            gcp.to_string(),
            "gcp projectId=proj projectNumber=42 region=us-central1 zone=us-central1-a instanceId=7 instanceName=vm-1 serviceAccount=sa@proj.iam.gserviceaccount.com"
        );
        let az = WorkloadIdentity::Azure(AzureIdentity {
            subscription: "sub".into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            compute: Some(AzureComputeIdentity {
                instance_id: "vm-id".into(),
                name: "vm-1".into(),
            }),
        });
        assert_eq!(
            az.to_string(),
            "azure subscription=sub resourceGroup=rg location=westeurope vmId=vm-id name=vm-1"
        );
    }

    #[test]
    fn identity_values_cannot_forge_log_lines() {
        let jwt = WorkloadIdentity::Jwt(JwtIdentity {
            issuer: "https://idp".into(),
            subject: "vm-1\nERROR forged".into(),
            attributes: [("a\nb".to_string(), "x".to_string())].into(),
        });
        let s = jwt.to_string();
        assert!(!s.contains('\n'), "{s}");
        assert!(s.contains(r#"subject="vm-1\nERROR forged""#), "{s}");
    }
}
