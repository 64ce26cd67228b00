//! The deployment files cannot be built here (no Docker, no cluster), so they are
//! read: each YAML file parses, and its ports, probe paths and settings agree with
//! what the binary does.

use std::path::PathBuf;

use serde_yaml_ng::Value;

use crate::running::{client, start};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_in_two_stages_and_listens_on_every_interface() {
    let text = read("Dockerfile");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("FROM ")).count(),
        2,
        "multi-stage"
    );
    assert!(
        text.contains("ENV TOLLGATE_LISTEN=0.0.0.0:8000"),
        "binds 0.0.0.0 inside the container"
    );
    assert!(text.contains("EXPOSE 8000 8081"), "the HTTP and gRPC ports");
    assert!(text.contains("cargo build --release --locked -p tollgate-server"));
}

#[test]
fn compose_runs_two_nodes_on_one_redis() {
    let doc = documents("compose.yaml").remove(0);
    let services = &doc["services"];
    assert!(
        services["redis"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("redis:7"))
    );
    for node in ["tollgate-a", "tollgate-b"] {
        let env = &services[node]["environment"];
        assert_eq!(
            env["RATE_LIMITER_ALGORITHM"], "redis_token_bucket",
            "{node}"
        );
        assert_eq!(
            env["REDIS_HOST"], "redis",
            "{node} reaches the redis service"
        );
        assert_eq!(env["TOLLGATE_LISTEN"], "0.0.0.0:8000", "{node}");
        let port = services[node]["ports"][0].as_str().expect("a port mapping");
        assert!(
            port.ends_with(":8000"),
            "{node} maps the listening port: {port}"
        );
        assert_eq!(services[node]["build"]["dockerfile"], "Dockerfile");
        // The Envoy rate limit service, with the rules of deploy/ratelimit/.
        assert_eq!(env["TOLLGATE_ENVOY_LISTEN"], "0.0.0.0:8081", "{node}");
        let dir = env["TOLLGATE_ENVOY_CONFIG_DIR"]
            .as_str()
            .expect("a rules dir");
        let volume = services[node]["volumes"][0].as_str().expect("a volume");
        assert_eq!(volume, format!("./deploy/ratelimit:{dir}:ro"), "{node}");
        let grpc = services[node]["ports"][1]
            .as_str()
            .expect("a gRPC port mapping");
        assert!(grpc.ends_with(":8081"), "{node} maps the gRPC port: {grpc}");
    }
    // The rules load: check-config reads them through an [envoy] section naming
    // the directory compose mounts (the TOLLGATE_ENVOY_* variables set the same
    // fields; config.rs tests them).
    let rules = repo("deploy/ratelimit");
    let conf = crate::common::scratch_file(
        "compose.toml",
        format!(
            "[envoy]\nlisten = \"0.0.0.0:8081\"\nconfig_dir = \"{}\"\n",
            rules.display()
        )
        .as_bytes(),
    );
    let run = crate::common::tollgate(&["check-config", conf.to_str().expect("path")], "");
    assert_eq!(run.status, 0, "the rules of deploy/ratelimit load: {run:?}");
    assert!(
        run.stdout.contains("# domain \"edge\": 2 rate limits"),
        "{run:?}"
    );
}

#[tokio::test]
async fn kubernetes_probes_and_ports_match_the_server() {
    let docs = documents("deploy/kubernetes/tollgate.yaml");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let map = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    };
    let toml = map("tollgate")["data"]["tollgate.toml"]
        .as_str()
        .expect("tollgate.toml in the ConfigMap");
    // The rules ConfigMap's files, where the configuration reads them: a scratch
    // directory stands for its mount.
    let container = &kind("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let mount = container["volumeMounts"]
        .as_sequence()
        .and_then(|m| m.iter().find(|v| v["name"] == "ratelimit"))
        .and_then(|v| v["mountPath"].as_str())
        .expect("the rules are mounted");
    assert!(
        toml.contains(&format!("config_dir = \"{mount}\"")),
        "the configuration reads the mounted rules"
    );
    let rules = crate::common::scratch_file("k8s-ratelimit", b"");
    std::fs::remove_file(&rules).expect("a name for the directory");
    std::fs::create_dir(&rules).expect("rules dir");
    let files = map("tollgate-ratelimit")["data"]
        .as_mapping()
        .expect("rule files");
    assert!(!files.is_empty());
    for (name, text) in files {
        let (Some(name), Some(text)) = (name.as_str(), text.as_str()) else {
            panic!("a rule file's name and text are strings");
        };
        std::fs::write(rules.join(name), text).expect("write a rule file");
    }
    let toml = toml.replace(mount, rules.to_str().expect("path"));
    let conf = crate::common::scratch_file("k8s.toml", toml.as_bytes());
    let run = crate::common::tollgate(&["check-config", conf.to_str().expect("path")], "");
    assert_eq!(
        run.status, 0,
        "the ConfigMap's configuration is valid: {run:?}"
    );
    assert!(run.stdout.contains("listen = \"0.0.0.0:8000\""), "{run:?}");
    assert!(
        run.stdout.contains("admin_listen = \"0.0.0.0:9000\""),
        "{run:?}"
    );

    assert_eq!(container["ports"][0]["containerPort"], 8000);
    assert_eq!(container["ports"][1]["containerPort"], 8081);
    assert!(
        toml.contains("listen = \"0.0.0.0:8081\""),
        "the gRPC listener"
    );
    assert_eq!(container["args"][2], "/etc/tollgate/tollgate.toml");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Readiness on the main port (a pod whose connections are all taken is not
    // ready), liveness on the admin port (it is still alive).
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], 8000);
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], 9000);
    assert_eq!(container["ports"][2]["containerPort"], 9000);
    assert_eq!(kind("Service")["spec"]["ports"][0]["targetPort"], 8000);
    assert_eq!(kind("Service")["spec"]["ports"][1]["targetPort"], 8081);

    // And the probe paths answer 200 on a running server, on both listeners.
    let s = start(&[], &[("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:0")]);
    let admin = s.admin.clone().expect("an admin listener");
    for base in [&s.base, &admin] {
        for path in ["/readyz", "/healthz"] {
            let r = client()
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("probe");
            assert_eq!(r.status(), 200, "{base}{path}");
        }
    }
}
