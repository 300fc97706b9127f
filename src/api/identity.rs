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
