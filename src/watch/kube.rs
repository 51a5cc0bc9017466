//! Load-balancer members on Kubernetes: a pod leaves its Service either through a readiness
//! gate (ferry sets the pod's condition `gate` to False; the pod spec lists the gate in
//! `readinessGates`, so the pod stops being Ready and its endpoints drop it) or through a label
//! the Service selects on (set to `false`). Each change is read back from the API's answer.
//! The last Ready pod among `peers` (a label selector) is never taken out.
//!
//! Tested against a tower-test mock of the API server (`tests` below): no API server runs here.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::lb::Outcome;
use crate::config::KubeSwitch;

fn condition(pod: &Pod, kind: &str) -> Option<bool> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == kind).map(|c| c.status == "True")
}

fn label(pod: &Pod, key: &str) -> Option<bool> {
    pod.metadata.labels.as_ref()?.get(key).map(|v| v == "true")
}

/// Whether the pod is in its Service by `switch` (a missing gate condition or label counts
/// as in: the pod was never taken out).
fn serving_by(pod: &Pod, switch: &KubeSwitch) -> bool {
    match switch {
        KubeSwitch::Gate(gate) => condition(pod, gate).unwrap_or(true),
        KubeSwitch::Label(key) => label(pod, key).unwrap_or(true),
    }
}

/// Put the pod in (`serving`) or take it out of its Service.
pub async fn set_member(
    client: kube::Client,
    namespace: &str,
    pod: &str,
    peers: &str,
    switch: &KubeSwitch,
    serving: bool,
) -> Result<Outcome, String> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let err = |what: &str| {
        let what = format!("{what} {namespace}/{pod}");
        move |e: kube::Error| format!("{what}: {e}")
    };
    let current = pods.get(pod).await.map_err(err("reading pod"))?;
    if serving_by(&current, switch) == serving {
        return Ok(Outcome::Already);
    }
    if !serving {
        let others =
            pods.list(&ListParams::default().labels(peers)).await.map_err(err("listing the peers of"))?;
        let ready = others.items.iter().any(|p| {
            p.metadata.name.as_deref() != Some(pod)
                && condition(p, "Ready") == Some(true)
                && serving_by(p, switch)
        });
        if !ready {
            return Ok(Outcome::LastMember);
        }
    }
    let value = if serving { "true" } else { "false" };
    let params = PatchParams::default();
    let after = match switch {
        KubeSwitch::Gate(gate) => {
            let patch = serde_json::json!({ "status": { "conditions": [{
                "type": gate, "status": if serving { "True" } else { "False" },
                "reason": "FerryWatch", "message": if serving { "healthy" } else { "down: taken out by ferry watch" },
                "lastTransitionTime": super::alert::now_rfc3339(),
            }]}});
            pods.patch_status(pod, &params, &Patch::Strategic(&patch))
                .await
                .map_err(err("patching the status of"))?
        }
        KubeSwitch::Label(key) => {
            let patch = serde_json::json!({ "metadata": { "labels": { key: value } } });
            pods.patch(pod, &params, &Patch::Merge(&patch)).await.map_err(err("labelling"))?
        }
    };
    if serving_by(&after, switch) == serving {
        Ok(Outcome::Done)
    } else {
        Err(format!("{namespace}/{pod} reads back {} after setting it to {value}", !serving))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;

    fn pod(name: &str, ready: bool, labels: serde_json::Value, gate: Option<bool>) -> serde_json::Value {
        let mut conditions =
            vec![serde_json::json!({"type": "Ready", "status": if ready { "True" } else { "False" }})];
        if let Some(g) = gate {
            conditions.push(
                serde_json::json!({"type": "ferry.io/serving", "status": if g { "True" } else { "False" }}),
            );
        }
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": "psi", "labels": labels },
            "status": { "conditions": conditions },
        })
    }

    fn list(items: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items })
    }

    /// A mock API server answering the expected requests in order: (method, path and query
    /// prefix, answer); returns the PATCH bodies it saw.
    fn api(
        expected: Vec<(Method, &'static str, serde_json::Value)>,
    ) -> (kube::Client, tokio::task::JoinHandle<Vec<serde_json::Value>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut patches = Vec::new();
            for (method, path, answer) in expected {
                let (request, send) = handle.next_request().await.expect("a request");
                assert_eq!(request.method(), method, "{}", request.uri());
                let uri = request.uri().to_string();
                assert!(uri.starts_with(path), "{uri} does not start with {path}");
                if method == Method::PATCH {
                    let body = request.into_body().collect_bytes().await.unwrap();
                    patches.push(serde_json::from_slice(&body).unwrap());
                }
                send.send_response(
                    Response::builder().body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap(),
                );
            }
            patches
        });
        (kube::Client::new(service, "psi"), server)
    }

    const POD: &str = "/api/v1/namespaces/psi/pods/app-1";
    const PODS: &str = "/api/v1/namespaces/psi/pods?&labelSelector=app%3Dpsi";

    #[tokio::test]
    async fn a_readiness_gate_is_set_false_then_true_and_read_back() {
        let gate = KubeSwitch::Gate("ferry.io/serving".into());
        let (client, server) = api(vec![
            (Method::GET, POD, pod("app-1", true, serde_json::json!({"app": "psi"}), None)),
            (
                Method::GET,
                PODS,
                list(vec![
                    pod("app-1", true, serde_json::json!({"app": "psi"}), None),
                    pod("app-2", true, serde_json::json!({"app": "psi"}), Some(true)),
                ]),
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/psi/pods/app-1/status",
                pod("app-1", false, serde_json::json!({}), Some(false)),
            ),
        ]);
        let outcome = set_member(client, "psi", "app-1", "app=psi", &gate, false).await;
        assert_eq!(outcome, Ok(Outcome::Done));
        let patches = server.await.unwrap();
        assert_eq!(patches[0]["status"]["conditions"][0]["type"], "ferry.io/serving");
        assert_eq!(patches[0]["status"]["conditions"][0]["status"], "False");

        let (client, server) = api(vec![
            (Method::GET, POD, pod("app-1", false, serde_json::json!({}), Some(false))),
            (
                Method::PATCH,
                "/api/v1/namespaces/psi/pods/app-1/status",
                pod("app-1", true, serde_json::json!({}), Some(true)),
            ),
        ]);
        assert_eq!(set_member(client, "psi", "app-1", "app=psi", &gate, true).await, Ok(Outcome::Done));
        assert_eq!(server.await.unwrap()[0]["status"]["conditions"][0]["status"], "True");
    }

    #[tokio::test]
    async fn a_label_is_switched_and_the_last_ready_pod_is_kept() {
        let label = KubeSwitch::Label("ferry.io/serving".into());
        let (client, server) = api(vec![
            (
                Method::GET,
                POD,
                pod("app-1", true, serde_json::json!({"app": "psi", "ferry.io/serving": "true"}), None),
            ),
            (
                Method::GET,
                PODS,
                list(vec![
                    pod("app-1", true, serde_json::json!({"app": "psi", "ferry.io/serving": "true"}), None),
                    pod("app-2", true, serde_json::json!({"app": "psi", "ferry.io/serving": "true"}), None),
                ]),
            ),
            (
                Method::PATCH,
                POD,
                pod("app-1", true, serde_json::json!({"app": "psi", "ferry.io/serving": "false"}), None),
            ),
        ]);
        assert_eq!(set_member(client, "psi", "app-1", "app=psi", &label, false).await, Ok(Outcome::Done));
        assert_eq!(
            server.await.unwrap()[0],
            serde_json::json!({"metadata": {"labels": {"ferry.io/serving": "false"}}})
        );

        // app-2 is the only other pod and it is not Ready: app-1 stays.
        let (client, server) = api(vec![
            (Method::GET, POD, pod("app-1", true, serde_json::json!({"app": "psi"}), None)),
            (
                Method::GET,
                PODS,
                list(vec![
                    pod("app-1", true, serde_json::json!({"app": "psi"}), None),
                    pod("app-2", false, serde_json::json!({"app": "psi"}), None),
                ]),
            ),
        ]);
        assert_eq!(
            set_member(client, "psi", "app-1", "app=psi", &label, false).await,
            Ok(Outcome::LastMember)
        );
        assert!(server.await.unwrap().is_empty(), "nothing was patched");

        // Already where it should be: one read, no write.
        let (client, server) = api(vec![(
            Method::GET,
            POD,
            pod("app-1", true, serde_json::json!({"ferry.io/serving": "true"}), None),
        )]);
        assert_eq!(set_member(client, "psi", "app-1", "app=psi", &label, true).await, Ok(Outcome::Already));
        assert!(server.await.unwrap().is_empty());
    }
}
