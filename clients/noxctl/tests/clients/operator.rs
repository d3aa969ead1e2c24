//! `/metrics`, `/system` and `/services` against real daemons.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use nox_e2e::Nox;
use serde_json::{Value, json};

use super::common::{pytools, text};

/// The exposition as the official Prometheus Python parser reads it: family name →
/// `{"type", "samples": [[name, labels, value]]}`.
fn parse_metrics(exposition: &str) -> Value {
    let script = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = {}\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   out[family.name] = {'type': family.type, 'samples': [[s.name, s.labels, s.value] for s in family.samples]}\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(pytools().join("python"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused the exposition: {}\n{exposition}",
        text(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(families: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.as_object()?.values().find_map(|family| {
        family["samples"].as_array()?.iter().find_map(|sample| {
            let matches = sample[0] == name
                && labels
                    .iter()
                    .all(|(key, value)| sample[1][*key].as_str() == Some(*value));
            matches.then(|| sample[2].as_f64()).flatten()
        })
    })
}

#[test]
fn metrics_count_requests_and_jobs_by_outcome_and_parse_as_prometheus() {
    let nox = Nox::builder()
        .frontend_toml("metrics_public = true")
        .start();
    assert_eq!(nox.run_py("print(1)")["returncode"], 0);
    assert_eq!(nox.run_sh("exit 3")["returncode"], 3);
    let timed_out = nox
        .client()
        .run("/run_sh", &json!({"cmd": "sleep 5", "timeout_s": 0.3}));
    assert_eq!(timed_out["timed_out"], true);
    let killed = nox.client().run(
        "/run_py",
        &json!({"code": "print('x' * 100000)", "limits": {"output_kb": 1}}),
    );
    assert_eq!(killed["limit_hit"], "output");
    nox.client()
        .post_json("/run_sh", &json!({"cmd": "reboot"}))
        .expect_error(400, "forbidden_command");

    // Public in this instance: no token.
    let reply = nox
        .client()
        .with_token(None)
        .request("GET", "/metrics", &[], None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        reply.content_type
    );
    let families = parse_metrics(&reply.text());
    let types: BTreeMap<&str, &str> = families
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, family)| (name.as_str(), family["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        types.get("nox_http_requests"),
        Some(&"counter"),
        "{types:?}"
    );
    assert_eq!(types.get("nox_jobs"), Some(&"counter"));
    assert_eq!(types.get("nox_job_duration_seconds"), Some(&"histogram"));
    assert_eq!(types.get("nox_job_queue_wait_seconds"), Some(&"histogram"));
    for gauge in [
        "nox_jobs_in_flight",
        "nox_jobs_queued",
        "nox_executor_up",
        "nox_build_info",
    ] {
        assert_eq!(types.get(gauge), Some(&"gauge"), "{gauge}");
    }
    let jobs = |language, outcome| {
        sample(
            &families,
            "nox_jobs_total",
            &[("language", language), ("outcome", outcome)],
        )
    };
    assert_eq!(jobs("python", "ok"), Some(1.0));
    assert_eq!(jobs("shell", "nonzero"), Some(1.0));
    assert_eq!(jobs("shell", "timeout"), Some(1.0));
    assert_eq!(jobs("python", "killed_by_limit"), Some(1.0));
    assert_eq!(jobs("shell", "refused"), Some(1.0));
    assert_eq!(jobs("python", "refused"), Some(0.0));
    assert_eq!(
        sample(
            &families,
            "nox_job_duration_seconds_count",
            &[("language", "shell")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &families,
            "nox_job_queue_wait_seconds_count",
            &[("language", "python")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &families,
            "nox_http_requests_total",
            &[("route", "run_sh"), ("status", "200")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &families,
            "nox_http_requests_total",
            &[("route", "run_sh"), ("status", "400")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&families, "nox_executor_up", &[]), Some(1.0));
    assert_eq!(sample(&families, "nox_jobs_in_flight", &[]), Some(0.0));
    assert_eq!(
        sample(
            &families,
            "nox_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // With the executor gone the scrape still answers, and says so.
    nox.kill_executor();
    let reply = nox
        .client()
        .with_token(None)
        .request("GET", "/metrics", &[], None);
    let families = parse_metrics(&reply.text());
    assert_eq!(sample(&families, "nox_executor_up", &[]), Some(0.0));
    assert_eq!(sample(&families, "nox_jobs_in_flight", &[]), None);
}

#[test]
fn metrics_need_the_token_by_default() {
    let nox = Nox::shared();
    nox.client()
        .with_token(None)
        .request("GET", "/metrics", &[], None)
        .expect_error(401, "unauthorized");
    let reply = nox.request("GET", "/metrics", &[], None);
    assert_eq!(reply.status, 200);
    assert!(
        reply.text().contains("nox_executor_up 1"),
        "{}",
        reply.text()
    );
}

#[test]
fn system_reports_cpu_memory_disk_uptime_and_load() {
    let nox = Nox::shared();
    nox.client()
        .with_token(None)
        .request("GET", "/system", &[], None)
        .expect_error(401, "unauthorized");
    let system = nox.request("GET", "/system", &[], None).expect_json(200);
    let cpu = system["cpu_percent"]
        .as_f64()
        .expect("/proc/stat is readable here");
    assert!((0.0..=100.0).contains(&cpu), "{system}");
    let memory = &system["memory"];
    assert!(memory["total"].as_u64().unwrap() >= memory["available"].as_u64().unwrap());
    assert!((0.0..=100.0).contains(&memory["used_percent"].as_f64().unwrap()));
    // The harness leaves frontend.state_dir at its default; /var/lib/nox may not exist
    // here, and then `disk` is null rather than an error.
    let disk = &system["disk"];
    assert!(disk.is_null() || disk["path"] == "/var/lib/nox", "{system}");
    assert!(system["uptime_s"].as_u64().unwrap() > 0);
    assert_eq!(system["load"].as_array().unwrap().len(), 3);
}

#[test]
fn system_measures_the_configured_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let nox = Nox::builder()
        .frontend_toml(&format!("state_dir = \"{}\"", dir.path().display()))
        .start();
    let system = nox.request("GET", "/system", &[], None).expect_json(200);
    let disk = &system["disk"];
    assert_eq!(disk["path"], dir.path().display().to_string(), "{system}");
    assert!(disk["total"].as_u64().unwrap() >= disk["free"].as_u64().unwrap());
}

#[test]
fn services_answer_for_every_configured_unit_and_never_fail() {
    let nox = Nox::builder()
        .frontend_toml("services = [\"nox-executor.service\", \"no-such-unit-xyz.service\"]")
        .start();
    let reply = nox.request("GET", "/services", &[], None).expect_json(200);
    let services = reply["services"].as_array().unwrap();
    let units: Vec<&str> = services
        .iter()
        .map(|s| s["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["nox-executor.service", "no-such-unit-xyz.service"]);
    if std::path::Path::new("/run/systemd/system").is_dir() {
        assert_ne!(reply["source"], "none", "{reply}");
        assert_eq!(services[1]["state"], "unknown", "{reply}");
    } else {
        // Not under systemd (this machine): said plainly, not an error.
        assert_eq!(reply["source"], "none", "{reply}");
        assert!(
            services.iter().all(|s| s["state"] == "unavailable"),
            "{reply}"
        );
    }
}
