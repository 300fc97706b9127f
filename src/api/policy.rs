//! `OnboardingPolicy` (authorization.onboarding.tetrate.io/v1alpha1), TSB's schema with the
//! GCP and Azure matchers this project adds in the same style (docs/policy.md).

use serde::{Deserialize, Serialize};

use super::meta::{LabelSelector, ObjectMeta};

pub const API_VERSION: &str = "authorization.onboarding.tetrate.io/v1alpha1";
pub const KIND: &str = "OnboardingPolicy";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnboardingPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: OnboardingPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnboardingPolicySpec {
    #[serde(default)]
    pub allow: Vec<OnboardingPolicyRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnboardingPolicyRule {
    #[serde(default)]
    pub workloads: Vec<WorkloadIdentityMatcher>,
    #[serde(default)]
    pub onboard_to: Vec<WorkloadGroupMatcher>,
}

/// Exactly one of the platform matchers is set (checked by `policy::validate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadIdentityMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsIdentityMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtIdentityMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpIdentityMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureIdentityMatcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsIdentityMatcher {
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Required, at least one: accounts are always listed explicitly.
    #[serde(default)]
    pub accounts: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Matcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsMatcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ec2Matcher {
    #[serde(default)]
    pub iam_role_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EcsMatcher {
    #[serde(default)]
    pub clusters: Vec<String>,
    #[serde(default)]
    pub iam_role_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtIdentityMatcher {
    pub issuer: String,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub attributes: Vec<AttributeMatcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributeMatcher {
    pub name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// GCP: projects are required (like AWS accounts), the rest narrows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcpIdentityMatcher {
    /// Project IDs or project numbers; at least one.
    #[serde(default)]
    pub projects: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gce: Option<GceMatcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GceMatcher {
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub instance_names: Vec<String>,
}

/// Azure: subscriptions are required, the rest narrows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureIdentityMatcher {
    #[serde(default)]
    pub subscriptions: Vec<String>,
    #[serde(default)]
    pub resource_groups: Vec<String>,
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<AzureComputeMatcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureComputeMatcher {
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "endpoint", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupMatcher {
    pub workload_group_selector: LabelSelector,
}
