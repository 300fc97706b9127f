//! AWS ECS: the task proves its IAM task role by a signed STS `GetCallerIdentity` request.
//!
//! Agent: reads the task role's credentials from the ECS container credentials endpoint and
//! signs `POST / Action=GetCallerIdentity&Version=2011-06-15` for STS, with the plane UID in
//! a signed `x-onboarding-audience` header (so the request is useless to any other plane).
//! Endpoint: checks the action, the audience header and that it is signed, forwards the
//! request to STS (only to an allowed STS host), and takes the account, role and task ID
//! from the `assumed-role` ARN STS answers with (ECS names a task role's session after the
//! task ID). The cluster comes from the task ARN in the task metadata, accepted only when
//! its task ID equals the one STS vouched for.

use serde::{Deserialize, Serialize};

use crate::api::identity::{AwsIdentity, EcsIdentity, IamRole};

/// The header that binds the signed request to one onboarding plane.
pub const AUDIENCE_HEADER: &str = "x-onboarding-audience";
pub const GET_CALLER_IDENTITY_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The signed request the agent sends (`Credential::AwsEcs.signedRequest`). Unknown fields
/// are refused, as in the rest of the credential. `Debug` hides the values of the headers
/// that are credentials (the signature, the session token).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedStsRequest {
    pub method: String,
    /// `https://sts.<region>.amazonaws.com/` (or the configured STS address).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Headers whose value lets whoever holds it act as the task (until the signature expires).
const SECRET_HEADERS: [&str; 2] = ["authorization", "x-amz-security-token"];

impl std::fmt::Debug for SignedStsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_HEADERS.iter().any(|s| k.eq_ignore_ascii_case(s));
                (
                    k.as_str(),
                    if secret {
                        crate::secret::REDACTED
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("SignedStsRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &self.body)
            .finish()
    }
}

/// `arn:<partition>:sts::<account>:assumed-role/<role>/<session>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumedRole {
    pub partition: String,
    pub account: String,
    pub role: String,
    pub session: String,
}

pub fn parse_assumed_role_arn(arn: &str) -> Option<AssumedRole> {
    let mut p = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("sts"), Some(_), Some(account), Some(res)) =
        (p.next(), p.next(), p.next(), p.next(), p.next(), p.next())
    else {
        return None;
    };
    let rest = res.strip_prefix("assumed-role/")?;
    let (role, session) = rest.rsplit_once('/')?;
    Some(AssumedRole {
        partition: partition.into(),
        account: account.into(),
        role: role.rsplit('/').next().unwrap_or(role).into(),
        session: session.into(),
    })
}

/// Cluster name and task ID from a task ARN
/// (`arn:aws:ecs:<region>:<account>:task/<cluster>/<task-id>`), and the region.
pub fn parse_task_arn(arn: &str) -> Option<(String, String, String)> {
    let mut p = arn.splitn(6, ':');
    let (Some("arn"), Some(_), Some("ecs"), Some(region), Some(_), Some(res)) =
        (p.next(), p.next(), p.next(), p.next(), p.next(), p.next())
    else {
        return None;
    };
    let rest = res.strip_prefix("task/")?;
    let (cluster, task) = rest.split_once('/')?;
    Some((region.into(), cluster.into(), task.into()))
}

/// The task metadata does not fit the task STS vouched for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskMetadataError {
    #[error("the task metadata has no TaskARN")]
    NoTaskArn,
    #[error("{0:?} is not a task ARN")]
    NotATaskArn(String),
    #[error(
        "the task metadata names task {task_id}, but STS vouches for session {session} (ECS names a task role's session after its task)"
    )]
    OtherTask { task_id: String, session: String },
}

/// Build the identity from STS's answer and the (unsigned) task metadata.
pub fn identity_from(
    assumed: &AssumedRole,
    task_metadata: Option<&serde_json::Value>,
) -> Result<AwsIdentity, TaskMetadataError> {
    let task_arn = task_metadata
        .and_then(|m| m.get("TaskARN"))
        .and_then(|v| v.as_str())
        .ok_or(TaskMetadataError::NoTaskArn)?;
    let (region, cluster_from_arn, task_id) = parse_task_arn(task_arn)
        .ok_or_else(|| TaskMetadataError::NotATaskArn(task_arn.to_owned()))?;
    if task_id != assumed.session {
        return Err(TaskMetadataError::OtherTask {
            task_id,
            session: assumed.session.clone(),
        });
    }
    let cluster = task_metadata
        .and_then(|m| m.get("Cluster"))
        .and_then(|v| v.as_str())
        .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
        .unwrap_or(cluster_from_arn);
    Ok(AwsIdentity {
        partition: assumed.partition.clone(),
        account: assumed.account.clone(),
        zone: task_metadata
            .and_then(|m| m.get("AvailabilityZone"))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        region,
        ec2: None,
        ecs: Some(EcsIdentity {
            task_id,
            cluster,
            iam_role: Some(IamRole {
                name: assumed.role.clone(),
            }),
        }),
    })
}

#[cfg(feature = "agent")]
pub use collect::*;

#[cfg(feature = "agent")]
mod collect {
    use std::time::Duration;

    use super::*;
    use crate::identity::aws::sigv4::{self, Credentials};

    #[derive(Debug, thiserror::Error)]
    #[error("ECS: {0}")]
    pub struct EcsCollectError(pub String);

    fn agent(timeout: Duration) -> ureq::Agent {
        crate::http_client::HttpClient::new(timeout).build()
    }

    fn get_json(
        url: &str,
        auth: Option<&str>,
        timeout: Duration,
    ) -> Result<serde_json::Value, EcsCollectError> {
        let mut req = agent(timeout).get(url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req
            .call()
            .map_err(|e| EcsCollectError(format!("GET {url}: {e}")))?;
        if resp.status() != 200 {
            return Err(EcsCollectError(format!(
                "GET {url}: HTTP {}",
                resp.status()
            )));
        }
        resp.body_mut()
            .read_json()
            .map_err(|e| EcsCollectError(format!("GET {url}: {e}")))
    }

    /// The task role's credentials from the container credentials endpoint: `full_uri`, or
    /// `relative_uri` under `base` (`http://169.254.170.2`), as the ECS agent sets them in
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`.
    pub fn fetch_task_credentials(
        base: &str,
        relative_uri: Option<&str>,
        full_uri: Option<&str>,
        authorization: Option<&str>,
        timeout: Duration,
    ) -> Result<Credentials, EcsCollectError> {
        let url = match (full_uri, relative_uri) {
            (Some(f), _) => f.to_string(),
            (None, Some(r)) => format!("{}{r}", base.trim_end_matches('/')),
            (None, None) => {
                return Err(EcsCollectError(
                    "neither AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor _FULL_URI is set: is this an ECS task with a task role?".into(),
                ));
            }
        };
        let v = get_json(&url, authorization, timeout)?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| EcsCollectError(format!("credentials answer has no {k}")))
        };
        Ok(Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("Token")?),
        })
    }

    /// The task metadata (`$ECS_CONTAINER_METADATA_URI_V4/task`).
    pub fn fetch_task_metadata(
        metadata_uri: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, EcsCollectError> {
        get_json(
            &format!("{}/task", metadata_uri.trim_end_matches('/')),
            None,
            timeout,
        )
    }

    /// Sign `GetCallerIdentity` for `sts_url` (`https://sts.<region>.amazonaws.com/`) in
    /// `region`, bound to `audience`, at `now_unix`.
    pub fn sign_get_caller_identity(
        creds: &Credentials,
        sts_url: &str,
        region: &str,
        audience: &str,
        now_unix: i64,
    ) -> Result<SignedStsRequest, EcsCollectError> {
        let (_, rest) = sts_url
            .split_once("://")
            .ok_or_else(|| EcsCollectError(format!("bad STS address {sts_url}")))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut headers = vec![
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
            (AUDIENCE_HEADER.to_string(), audience.to_string()),
        ];
        let signed = sigv4::sign(
            "POST",
            host,
            path,
            &[],
            &headers,
            GET_CALLER_IDENTITY_BODY.as_bytes(),
            creds,
            region,
            "sts",
            &sigv4::amz_date(now_unix),
        );
        headers.extend(signed);
        Ok(SignedStsRequest {
            method: "POST".into(),
            url: sts_url.to_string(),
            headers,
            body: GET_CALLER_IDENTITY_BODY.into(),
        })
    }
}

pub use forward::*;

/// The endpoint half: [`check_request`] decides (pure); [`verify`] forwards to STS (shell).
mod forward {
    use super::*;
    use crate::identity::VerifyError;
    use crate::identity::aws::sigv4;

    /// `authentication.aws.ecs` in the endpoint's config.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields, default)]
    pub struct EcsConfig {
        /// STS addresses (scheme://host[:port]) the endpoint will forward to; a signed
        /// request for any other host is refused (the endpoint never calls an address the
        /// agent chose).
        pub allowed_sts: Vec<String>,
    }

    impl Default for EcsConfig {
        fn default() -> Self {
            EcsConfig {
                allowed_sts: vec!["https://sts.amazonaws.com".into()],
            }
        }
    }

    fn header<'a>(req: &'a SignedStsRequest, name: &str) -> Option<&'a str> {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Check the signed request (pure): action, audience binding, allowed STS address.
    pub fn check_request(
        req: &SignedStsRequest,
        cfg: &EcsConfig,
        audience: &str,
    ) -> Result<(), VerifyError> {
        if req.method != "POST" || req.body != GET_CALLER_IDENTITY_BODY {
            return Err(VerifyError::Invalid(
                "the signed request must be POST Action=GetCallerIdentity&Version=2011-06-15"
                    .into(),
            ));
        }
        let origin = req.url.trim_end_matches('/');
        if !cfg
            .allowed_sts
            .iter()
            .any(|a| a.trim_end_matches('/') == origin)
        {
            return Err(VerifyError::Invalid(format!(
                "STS address {origin} is not one this endpoint forwards to ({:?})",
                cfg.allowed_sts
            )));
        }
        match header(req, AUDIENCE_HEADER) {
            Some(a) if a == audience => {}
            found => {
                return Err(VerifyError::WrongAudience {
                    expected: audience.into(),
                    found: found.unwrap_or("").into(),
                });
            }
        }
        let auth = header(req, "authorization")
            .ok_or_else(|| VerifyError::Malformed("no Authorization header".into()))?;
        if !sigv4::signed_headers(auth)
            .iter()
            .any(|h| h == AUDIENCE_HEADER)
        {
            return Err(VerifyError::Invalid(format!(
                "{AUDIENCE_HEADER} is not among the signed headers"
            )));
        }
        Ok(())
    }

    /// Forward the request to STS and build the identity (blocking).
    #[cfg(feature = "endpoint")]
    pub fn verify(
        req: &SignedStsRequest,
        task_metadata: Option<&serde_json::Value>,
        cfg: &EcsConfig,
        audience: &str,
    ) -> Result<AwsIdentity, VerifyError> {
        use crate::identity::aws::api::{first_value, xml_values};
        use std::time::Duration;

        check_request(req, cfg, audience)?;
        let http = crate::http_client::HttpClient::new(Duration::from_secs(10)).build();
        let mut r = http.post(&req.url);
        for (k, v) in &req.headers {
            if !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("content-length") {
                r = r.header(k.as_str(), v.as_str());
            }
        }
        let mut resp = r
            .send(req.body.as_bytes())
            .map_err(|e| VerifyError::Unavailable(format!("STS: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| VerifyError::Unavailable(format!("STS: {e}")))?;
        if status != 200 {
            let msg = first_value(&text, "Message").unwrap_or(&text).to_string();
            return Err(if status >= 500 {
                VerifyError::Unavailable(format!("STS HTTP {status}: {msg}"))
            } else {
                VerifyError::InvalidSignature(format!("STS refused the signed request: {msg}"))
            });
        }
        let arn = xml_values(&text, "Arn")
            .into_iter()
            .next()
            .ok_or_else(|| VerifyError::Unavailable("STS answer has no Arn".into()))?;
        let assumed = parse_assumed_role_arn(arn).ok_or_else(|| {
            VerifyError::Invalid(format!(
                "STS says the caller is {arn}, not an assumed role (an ECS task role)"
            ))
        })?;
        identity_from(&assumed, task_metadata).map_err(|e| VerifyError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_hides_the_signature_and_the_session_token() {
        let req = super::SignedStsRequest {
            method: "POST".into(),
            url: "https://sts.us-east-1.amazonaws.com/".into(),
            headers: vec![
                (
                    "Authorization".into(),
                    "AWS4-HMAC-SHA256 Signature=deadbeef".into(),
                ),
                ("X-Amz-Security-Token".into(), "SESSION-TOKEN-123".into()),
                ("x-onboarding-audience".into(), "plane-1".into()),
            ],
            body: super::GET_CALLER_IDENTITY_BODY.into(),
        };
        let shown = format!("{req:?} {req:#?}");
        assert!(!shown.contains("deadbeef"), "{shown}");
        assert!(!shown.contains("SESSION-TOKEN-123"), "{shown}");
        assert!(
            shown.contains("x-onboarding-audience") && shown.contains("plane-1"),
            "{shown}"
        );
    }

    use super::*;

    #[test]
    fn arns() {
        let a = parse_assumed_role_arn(
            "arn:aws:sts::123456789012:assumed-role/app-task-role/0f1e2d3c4b5a",
        )
        .unwrap();
        assert_eq!(a.role, "app-task-role");
        assert_eq!(a.session, "0f1e2d3c4b5a");
        assert!(parse_assumed_role_arn("arn:aws:iam::123456789012:user/bob").is_none());
        assert_eq!(
            parse_task_arn("arn:aws:ecs:eu-west-1:123456789012:task/prod/0f1e2d3c4b5a"),
            Some(("eu-west-1".into(), "prod".into(), "0f1e2d3c4b5a".into()))
        );
    }

    #[test]
    fn task_metadata_must_name_the_sts_session() {
        let a = parse_assumed_role_arn("arn:aws:sts::1:assumed-role/r/task-1").unwrap();
        let meta = serde_json::json!({"TaskARN": "arn:aws:ecs:eu-west-1:1:task/prod/task-1", "Cluster": "arn:aws:ecs:eu-west-1:1:cluster/prod"});
        let id = identity_from(&a, Some(&meta)).unwrap();
        assert_eq!(id.ecs.as_ref().unwrap().cluster, "prod");
        assert_eq!(id.region, "eu-west-1");
        let other = serde_json::json!({"TaskARN": "arn:aws:ecs:eu-west-1:1:task/prod/task-2"});
        assert!(
            identity_from(&a, Some(&other))
                .unwrap_err()
                .to_string()
                .contains("task-2")
        );
        assert!(identity_from(&a, None).is_err());
    }

    #[test]
    fn a_signed_request_with_unknown_fields_is_refused() {
        let ok = serde_json::json!({"method": "POST", "url": "https://sts.amazonaws.com/",
                                   "headers": [["host", "sts.amazonaws.com"]], "body": ""});
        assert!(serde_json::from_value::<SignedStsRequest>(ok.clone()).is_ok());
        let mut extra = ok;
        extra["bdy"] = "x".into();
        let e = serde_json::from_value::<SignedStsRequest>(extra).unwrap_err();
        assert!(e.to_string().contains("bdy"), "{e}");
    }
}
