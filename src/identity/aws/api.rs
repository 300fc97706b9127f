//! The endpoint's AWS API client: the IAM role and state of an instance
//! (`ec2:DescribeInstances` -> instance profile -> `iam:GetInstanceProfile` -> role), since
//! the identity document does not carry the role and the VM's `iam/info` is unsigned.
//! Blocking (ureq); call from a blocking task.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::sigv4::{self, Credentials};

/// `authentication.aws.api` in the endpoint's config.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsApiConfig {
    /// One address for every service (e.g. a local moto server, or a VPC endpoint proxy);
    /// unset means the public regional endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Refuse instances that are not `running`.
    #[serde(default)]
    pub require_running: bool,
}

impl std::fmt::Debug for AwsApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsApiConfig")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("require_running", &self.require_running)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsApiError {
    #[error("AWS API {action} unreachable: {0}", action = .1)]
    Unavailable(String, &'static str),
    #[error("AWS API {action} refused: HTTP {status}: {message}")]
    Refused {
        action: &'static str,
        status: u16,
        message: String,
    },
    #[error("instance {0} does not exist in the account the endpoint's credentials reach")]
    NoSuchInstance(String),
    #[error("instance {id} is {state}, not running")]
    NotRunning { id: String, state: String },
    #[error("unexpected AWS API answer: {0}")]
    Unexpected(String),
}

/// What DescribeInstances says about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub state: String,
    pub instance_profile_arn: Option<String>,
    pub private_ip: Option<String>,
}

pub struct AwsApi {
    cfg: AwsApiConfig,
    http: ureq::Agent,
}

/// The text of every `<tag>...</tag>` in `xml` (AWS Query API answers are flat and
/// predictable; no attributes or CDATA on the elements read here).
pub fn xml_values<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// The first `<tag>` text.
pub fn first_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    first(xml, tag)
}

fn first<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    xml_values(xml, tag).into_iter().next()
}

/// The profile name in an instance profile ARN (`arn:aws:iam::123:instance-profile/path/name`).
pub fn profile_name_from_arn(arn: &str) -> Option<&str> {
    arn.split_once(":instance-profile/")
        .map(|(_, rest)| rest.rsplit('/').next().unwrap_or(rest))
        .filter(|n| !n.is_empty())
}

impl AwsApi {
    pub fn new(cfg: AwsApiConfig) -> AwsApi {
        let http = crate::http_client::HttpClient::new(Duration::from_secs(10)).build();
        AwsApi { cfg, http }
    }

    fn creds(&self) -> Credentials {
        Credentials {
            access_key_id: self.cfg.access_key_id.clone(),
            secret_access_key: self.cfg.secret_access_key.clone(),
            session_token: self.cfg.session_token.clone(),
        }
    }

    fn call(
        &self,
        action: &'static str,
        service: &str,
        region: &str,
        default_url: String,
        form: &[(&str, &str)],
    ) -> Result<String, AwsApiError> {
        let url = self.cfg.endpoint.clone().unwrap_or(default_url);
        let (scheme_rest, path) = match url.split_once("://") {
            Some((_, r)) => match r.find('/') {
                Some(i) => (&r[..i], r[i..].to_string()),
                None => (r, "/".to_string()),
            },
            None => return Err(AwsApiError::Unexpected(format!("bad API address {url}"))),
        };
        let host = scheme_rest.to_string();
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let ctype = "application/x-www-form-urlencoded; charset=utf-8";
        let now = crate::clock::unix(SystemTime::now());
        let signed = sigv4::sign(
            "POST",
            &host,
            &path,
            &[],
            &[("content-type".into(), ctype.into())],
            body.as_bytes(),
            &self.creds(),
            region,
            service,
            &sigv4::amz_date(now),
        );
        let mut req = self.http.post(&url).header("content-type", ctype);
        for (k, v) in &signed {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut resp = req
            .send(body.as_bytes())
            .map_err(|e| AwsApiError::Unavailable(e.to_string(), action))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .map_err(|e| AwsApiError::Unavailable(e.to_string(), action))?;
        if status != 200 {
            let message = first(&text, "Message").unwrap_or(&text).to_string();
            if first(&text, "Code") == Some("InvalidInstanceID.NotFound") {
                return Err(AwsApiError::NoSuchInstance(
                    form.iter()
                        .find(|(k, _)| *k == "InstanceId.1")
                        .map(|(_, v)| v.to_string())
                        .unwrap_or_default(),
                ));
            }
            return Err(AwsApiError::Refused {
                action,
                status,
                message,
            });
        }
        Ok(text)
    }

    /// `ec2:DescribeInstances` for one instance.
    pub fn describe_instance(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<InstanceInfo, AwsApiError> {
        let xml = self.call(
            "ec2:DescribeInstances",
            "ec2",
            region,
            format!("https://ec2.{region}.amazonaws.com/"),
            &[
                ("Action", "DescribeInstances"),
                ("Version", "2016-11-15"),
                ("InstanceId.1", instance_id),
            ],
        )?;
        let Some(item) = first(&xml, "instancesSet") else {
            return Err(AwsApiError::NoSuchInstance(instance_id.to_string()));
        };
        if first(item, "instanceId") != Some(instance_id) {
            return Err(AwsApiError::NoSuchInstance(instance_id.to_string()));
        }
        let state = first(item, "instanceState")
            .and_then(|s| first(s, "name"))
            .ok_or_else(|| AwsApiError::Unexpected("no instanceState".into()))?
            .to_string();
        let instance_profile_arn = first(item, "iamInstanceProfile")
            .and_then(|p| first(p, "arn"))
            .map(str::to_string);
        Ok(InstanceInfo {
            state,
            instance_profile_arn,
            private_ip: first(item, "privateIpAddress").map(str::to_string),
        })
    }

    /// `iam:GetInstanceProfile`: the role names in a profile.
    pub fn instance_profile_roles(
        &self,
        partition: &str,
        profile_name: &str,
    ) -> Result<Vec<String>, AwsApiError> {
        let (url, region) = match partition {
            "aws-cn" => (
                "https://iam.cn-north-1.amazonaws.com.cn/".to_string(),
                "cn-north-1",
            ),
            "aws-us-gov" => (
                "https://iam.us-gov.amazonaws.com/".to_string(),
                "us-gov-west-1",
            ),
            _ => ("https://iam.amazonaws.com/".to_string(), "us-east-1"),
        };
        let xml = self.call(
            "iam:GetInstanceProfile",
            "iam",
            region,
            url,
            &[
                ("Action", "GetInstanceProfile"),
                ("Version", "2010-05-08"),
                ("InstanceProfileName", profile_name),
            ],
        )?;
        Ok(xml_values(&xml, "RoleName")
            .into_iter()
            .map(str::to_string)
            .collect())
    }

    /// The instance's IAM role (None without an instance profile), enforcing `running`
    /// when configured. A profile holds at most one role; more is refused as unexpected.
    pub fn instance_role(
        &self,
        partition: &str,
        region: &str,
        instance_id: &str,
    ) -> Result<Option<String>, AwsApiError> {
        let info = self.describe_instance(region, instance_id)?;
        if self.cfg.require_running && info.state != "running" {
            return Err(AwsApiError::NotRunning {
                id: instance_id.to_string(),
                state: info.state,
            });
        }
        let Some(arn) = info.instance_profile_arn else {
            return Ok(None);
        };
        let name = profile_name_from_arn(&arn)
            .ok_or_else(|| AwsApiError::Unexpected(format!("instance profile ARN {arn}")))?;
        let mut roles = self.instance_profile_roles(partition, name)?;
        match roles.len() {
            0 => Ok(None),
            1 => Ok(roles.pop()),
            n => Err(AwsApiError::Unexpected(format!(
                "instance profile {name} has {n} roles"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_and_arn_helpers() {
        let xml = "<a><RoleName>web</RoleName><x/><RoleName>db</RoleName></a>";
        assert_eq!(xml_values(xml, "RoleName"), vec!["web", "db"]);
        assert_eq!(
            profile_name_from_arn("arn:aws:iam::123456789012:instance-profile/team/web-profile"),
            Some("web-profile")
        );
        assert_eq!(profile_name_from_arn("arn:aws:iam::1:role/x"), None);
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = AwsApiConfig {
            secret_access_key: "SECRET".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
