//! Prometheus metrics at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OnboardingLabels {
    /// `allowed`, `denied`, `invalid_credential`, `error`.
    pub outcome: String,
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub namespace: String,
}

/// The `namespace` label of a denial whose WorkloadGroup does not exist. Any authenticated
/// caller names the namespace it asks for, so a namespace taken from the request as is
/// would let it grow the label set (and the endpoint's memory) without bound.
pub const UNKNOWN_NAMESPACE: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

pub struct Metrics {
    registry: Registry,
    pub onboardings: Family<OnboardingLabels, Counter>,
    pub denials: Family<DenialLabels, Counter>,
    pub registrations: Counter,
    pub registrations_deleted: Counter,
    pub connected_agents: Gauge,
    pub latency: Family<RouteLabels, Histogram>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("onboarding");
        let onboardings = Family::<OnboardingLabels, Counter>::default();
        registry.register(
            "authorizations",
            "Authorization attempts by outcome and platform",
            onboardings.clone(),
        );
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "policy_denials",
            "Onboardings denied by OnboardingPolicy, by WorkloadGroup namespace",
            denials.clone(),
        );
        let registrations = Counter::default();
        registry.register(
            "registrations",
            "Workload registrations (new or reused)",
            registrations.clone(),
        );
        let registrations_deleted = Counter::default();
        registry.register(
            "registrations_deleted",
            "WARs deleted after the grace period or on unregister",
            registrations_deleted.clone(),
        );
        let connected_agents = Gauge::default();
        registry.register(
            "connected_agents",
            "Agents with a live keep-alive session on this instance",
            connected_agents.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "API request latency by route",
            latency.clone(),
        );
        Metrics {
            registry,
            onboardings,
            denials,
            registrations,
            registrations_deleted,
            connected_agents,
            latency,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn onboarding(&self, outcome: &str, platform: &str) {
        self.onboardings
            .get_or_create(&OnboardingLabels {
                outcome: outcome.into(),
                platform: platform.into(),
            })
            .inc();
    }
}

impl Metrics {
    /// Counts an onboarding denied by policy. `group_namespace` is the namespace of the
    /// WorkloadGroup the caller asked for when that group exists, so the label set stays
    /// bounded by the namespaces the operator configured; `None` counts as
    /// [`UNKNOWN_NAMESPACE`].
    pub fn policy_denial(&self, group_namespace: Option<&str>) {
        self.denials
            .get_or_create(&DenialLabels {
                namespace: group_namespace.unwrap_or(UNKNOWN_NAMESPACE).to_string(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial_lines(m: &Metrics) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("onboarding_policy_denials_total{"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn denial_labels_are_bounded_to_known_namespaces() {
        let m = Metrics::new();
        // Requests for groups that do not exist, each naming a namespace of its own.
        for _ in 0..100 {
            m.policy_denial(None);
        }
        m.policy_denial(Some("bookinfo"));
        m.policy_denial(Some("bookinfo"));
        let lines = denial_lines(&m);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines.contains(&format!(
                "onboarding_policy_denials_total{{namespace=\"{UNKNOWN_NAMESPACE}\"}} 100"
            )),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"onboarding_policy_denials_total{namespace=\"bookinfo\"} 2".into()),
            "{lines:?}"
        );
    }
}
