//! The endpoint's AWS API client and the ECS STS proof against moto's server (a real local
//! implementation of the AWS APIs, from PyPI: `pip install 'moto[server]'`). Setup in moto
//! is done with boto3 (installed with moto), the AWS SDK for Python.
//!
//! Without moto this test says so and passes, unless CI=true (then missing moto fails).
#![cfg(all(feature = "endpoint", feature = "agent"))]

#[path = "support/moto.rs"]
mod moto;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moto::{Moto, boto3, start_moto};

use workload_onboarding::identity::VerifyError;
use workload_onboarding::identity::aws::api::{AwsApi, AwsApiConfig, AwsApiError};
use workload_onboarding::identity::aws::ecs::{self, EcsConfig};
// The simulator is a test and demo tool, not library code: its binary owns it and the tests
// compile the same source.
#[allow(dead_code)]
#[path = "../src/bin/cloud-metadata-simulator/simulator.rs"]
mod simulator;

use simulator::{SimulatedHost, Simulator, SimulatorKeys, SimulatorServer};

fn api(moto: &Moto, require_running: bool) -> AwsApi {
    AwsApi::new(AwsApiConfig {
        endpoint: Some(moto.url.clone()),
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        session_token: None,
        require_running,
    })
}

#[test]
fn instance_role_and_state_through_describe_instances_and_get_instance_profile() {
    let Some(moto) = start_moto() else { return };
    let ids = boto3(
        &moto,
        r#"
iam = c('iam'); ec2 = c('ec2')
iam.create_role(RoleName='web-role', AssumeRolePolicyDocument='{}')
iam.create_instance_profile(InstanceProfileName='web-profile')
iam.add_role_to_instance_profile(InstanceProfileName='web-profile', RoleName='web-role')
ami = ec2.describe_images()['Images'][0]['ImageId']
a = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, IamInstanceProfile={'Name': 'web-profile'})['Instances'][0]['InstanceId']
b = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)['Instances'][0]['InstanceId']
ec2.stop_instances(InstanceIds=[b])
print(a, b)
"#,
    );
    let (with_role, stopped) = ids.split_once(' ').unwrap();

    let info = api(&moto, false)
        .describe_instance("us-east-1", with_role)
        .unwrap();
    assert_eq!(info.state, "running");
    assert!(
        info.instance_profile_arn
            .unwrap()
            .ends_with("instance-profile/web-profile")
    );
    assert_eq!(
        api(&moto, true)
            .instance_role("aws", "us-east-1", with_role)
            .unwrap(),
        Some("web-role".to_string())
    );
    // No instance profile: no role (a policy listing iamRoleNames will not match).
    assert_eq!(
        api(&moto, false)
            .instance_role("aws", "us-east-1", stopped)
            .unwrap(),
        None
    );
    // Require running: the stopped instance is refused.
    match api(&moto, true).instance_role("aws", "us-east-1", stopped) {
        Err(AwsApiError::NotRunning { state, .. }) => {
            assert!(state == "stopped" || state == "stopping")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        api(&moto, false).instance_role("aws", "us-east-1", "i-00000000000000000"),
        Err(AwsApiError::NoSuchInstance(_))
    ));
}

#[test]
fn ecs_task_role_proof_through_sts() {
    let Some(moto) = start_moto() else { return };
    let task_id = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let creds = boto3(
        &moto,
        &format!(
            r#"
iam = c('iam')
arn = iam.create_role(RoleName='app-task-role', AssumeRolePolicyDocument='{{}}')['Role']['Arn']
cr = c('sts').assume_role(RoleArn=arn, RoleSessionName='{task_id}')['Credentials']
print(json.dumps({{'AccessKeyId': cr['AccessKeyId'], 'SecretAccessKey': cr['SecretAccessKey'], 'Token': cr['SessionToken'], 'Expiration': str(cr['Expiration']), 'RoleArn': arn}}))
"#
        ),
    );
    // The simulator plays the ECS container credentials and task metadata endpoints.
    let host = SimulatedHost {
        ecs_credentials: Some(serde_json::from_str(&creds).unwrap()),
        ecs_task_metadata: Some(serde_json::json!({
            "Cluster": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
            "TaskARN": format!("arn:aws:ecs:us-east-1:123456789012:task/prod/{task_id}"),
            "AvailabilityZone": "us-east-1a",
        })),
        ..SimulatedHost::default()
    };
    let keys =
        SimulatorKeys::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cloud-sim"))
            .unwrap();
    let sim = SimulatorServer::start(Arc::new(Simulator::new(keys, host)), 0).unwrap();
    let t = Duration::from_secs(5);

    // Agent half.
    let task_creds =
        ecs::fetch_task_credentials(&sim.base_url(), Some("/v2/credentials/sim"), None, None, t)
            .unwrap();
    let metadata = ecs::fetch_task_metadata(&format!("{}/v4", sim.base_url()), t).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sts_url = format!("{}/", moto.url);
    let signed =
        ecs::sign_get_caller_identity(&task_creds, &sts_url, "us-east-1", "plane-1", now).unwrap();

    // Endpoint half.
    let cfg = EcsConfig {
        allowed_sts: vec![moto.url.clone()],
    };
    let id = ecs::verify(&signed, Some(&metadata), &cfg, "plane-1").unwrap();
    let e = id.ecs.as_ref().unwrap();
    assert_eq!(e.task_id, task_id);
    assert_eq!(e.cluster, "prod");
    assert_eq!(e.iam_role.as_ref().unwrap().name, "app-task-role");
    assert_eq!(id.account, "123456789012");

    // The same signed request presented to another plane.
    assert!(matches!(
        ecs::verify(&signed, Some(&metadata), &cfg, "plane-2"),
        Err(VerifyError::WrongAudience { .. })
    ));
    // An STS address the endpoint was not configured for is never called.
    let other = EcsConfig {
        allowed_sts: vec!["https://sts.amazonaws.com".into()],
    };
    assert!(matches!(
        ecs::verify(&signed, Some(&metadata), &other, "plane-1"),
        Err(VerifyError::Invalid(_))
    ));
    // Task metadata claiming another task than the one STS vouches for.
    let mut lying = metadata.clone();
    lying["TaskARN"] = serde_json::json!("arn:aws:ecs:us-east-1:123456789012:task/prod/ffff");
    assert!(matches!(
        ecs::verify(&signed, Some(&lying), &cfg, "plane-1"),
        Err(VerifyError::Invalid(_))
    ));
}
