//! Streaming latency. A shell job prints a high-resolution timestamp (`date +%s.%N`), sleeps,
//! and does it again; the client asks for NDJSON (`Accept: application/x-ndjson`) and notes,
//! for each line, the time between the job printing it and the line's chunk arriving (same
//! host, same clock). Measured directly and, when they are installed, through nginx and Caddy
//! run from the shipped configurations (`packaging/nginx/nox.conf`, `packaging/Caddyfile`),
//! adapted only to listen on a free loopback port without TLS, with a temporary prefix.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::client::{self, Conn};
use crate::{Check, Failure, Nox, free_port, percentile};

const LINES: usize = 20;
const GAP_S: &str = "0.05";
const TARGET_MS: f64 = 50.0;

/// A timestamp printed by `date +%s.%N`, as time since the epoch.
fn parse_timestamp(line: &str) -> Option<Duration> {
    let (seconds, fraction) = line.trim().split_once('.')?;
    let seconds: u64 = seconds.parse().ok()?;
    let digits: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(9)
        .collect();
    Some(Duration::new(seconds, digits.parse().ok()?))
}

/// Run the job through `port` and return each line's latency.
async fn line_latencies(port: u16, token: &str) -> Result<Vec<Duration>, Failure> {
    let command = format!("for i in $(seq {LINES}); do date +%s.%N; sleep {GAP_S}; done");
    let request = client::post_json(
        port,
        token,
        "/run_sh",
        serde_json::json!({ "cmd": command }).to_string(),
        Some("application/x-ndjson"),
    )?;
    let mut conn: Conn<Full<Bytes>> = client::connect(port).await?;
    conn.sender.ready().await?;
    let response = conn.sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(format!("the streamed job answered {}", response.status()).into());
    }
    let mut body = response.into_body();
    let (mut pending, mut stdout) = (Vec::new(), String::new());
    let mut latencies = Vec::new();
    let mut returncode = None;
    while let Some(frame) = body.frame().await {
        let arrived = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: serde_json::Value = serde_json::from_slice(&line)?;
            match event["type"].as_str() {
                Some("stdout") => {
                    stdout.push_str(event["data"].as_str().unwrap_or_default());
                    while let Some(newline) = stdout.find('\n') {
                        let printed: String = stdout.drain(..=newline).collect();
                        let at = parse_timestamp(&printed)
                            .ok_or_else(|| format!("not a timestamp: {printed:?}"))?;
                        latencies.push(arrived.saturating_sub(at));
                    }
                }
                Some("finished") => returncode = event["returncode"].as_i64(),
                Some("error") => return Err(format!("the stream ended with {event}").into()),
                _ => {}
            }
        }
    }
    if returncode != Some(0) || latencies.len() != LINES {
        return Err(format!(
            "the job ended with returncode {returncode:?} after {} of {LINES} lines",
            latencies.len()
        )
        .into());
    }
    Ok(latencies)
}

/// A reverse proxy run for the measurement, stopped (SIGTERM, then SIGKILL) when dropped.
struct Proxy {
    child: Child,
    port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` on PATH (or in the sbin directories root's PATH has).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

/// The shipped nginx site without the redirect server and TLS, listening on `port`, with
/// nox on `upstream`.
fn nginx_site(shipped: &str, port: u16, upstream: u16) -> Result<String, Failure> {
    let mut site = String::new();
    let mut skipping = false;
    for line in shipped.lines() {
        let marker = line.trim();
        if marker == "# BEGIN plain-http-redirect" || marker == "# BEGIN tls" {
            skipping = true;
            if marker == "# BEGIN tls" {
                let _ = writeln!(site, "    listen 127.0.0.1:{port};");
            }
            continue;
        }
        if marker == "# END plain-http-redirect" || marker == "# END tls" {
            skipping = false;
            continue;
        }
        if !skipping {
            site.push_str(line);
            site.push('\n');
        }
    }
    let shipped_upstream = "server 127.0.0.1:8080;";
    if !site.contains(shipped_upstream) || !site.contains(&format!("listen 127.0.0.1:{port};")) {
        return Err("packaging/nginx/nox.conf no longer has the markers the bench adapts".into());
    }
    Ok(site.replace(shipped_upstream, &format!("server 127.0.0.1:{upstream};")))
}

fn start_nginx(program: &Path, dir: &Path, upstream: u16) -> Result<Proxy, Failure> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let site = nginx_site(
        &std::fs::read_to_string(packaging("nginx/nox.conf"))?,
        port,
        upstream,
    )?;
    std::fs::write(dir.join("site.conf"), site)?;
    let prefix = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {prefix}/client_body;\n    \
             proxy_temp_path {prefix}/proxy;\n    fastcgi_temp_path {prefix}/fastcgi;\n    \
             uwsgi_temp_path {prefix}/uwsgi;\n    scgi_temp_path {prefix}/scgi;\n    \
             include {prefix}/site.conf;\n}}\n"
        ),
    )?;
    let child = Command::new(program)
        .arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proxy { child, port })
}

fn start_caddy(program: &Path, dir: &Path, upstream: u16) -> Result<Proxy, Failure> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    // The shipped file as it is, after a global block that turns off the admin endpoint
    // (its fixed port 2019 may be taken) and binds loopback only (a site address does not
    // choose the interface).
    let caddyfile = format!(
        "{{\n\tadmin off\n\tdefault_bind 127.0.0.1\n}}\n\n{}",
        std::fs::read_to_string(packaging("Caddyfile"))?
    );
    std::fs::write(dir.join("Caddyfile"), caddyfile)?;
    let child = Command::new(program)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.join("Caddyfile"))
        .env("NOX_SITE", format!("http://127.0.0.1:{port}"))
        .env("NOX_UPSTREAM", format!("127.0.0.1:{upstream}"))
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proxy { child, port })
}

/// Wait until `/health` answers 200 through the proxy.
async fn wait_proxy(proxy: &mut Proxy) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("the proxy exited at start ({status})").into());
        }
        if let Ok(reply) = client::once(
            proxy.port,
            client::get(proxy.port, "/health")?,
            Duration::from_secs(1),
        )
        .await
            && reply.status.is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the proxy did not answer /health within 10 s".into())
}

fn judged(what: &str, latencies: Result<Vec<Duration>, Failure>) -> Check {
    let requirement = format!("streaming: job prints a line → client has it, {what}");
    let target = format!("≤ {TARGET_MS} ms (max)");
    match latencies {
        Ok(mut latencies) => {
            latencies.sort_unstable();
            let (p50, max) = (percentile(&latencies, 0.5), percentile(&latencies, 1.0));
            Check::new(
                requirement,
                format!(
                    "p50 {p50:.2} ms, max {max:.2} ms over {} lines (NDJSON)",
                    latencies.len()
                ),
                target,
                max <= TARGET_MS,
            )
        }
        Err(error) => Check::new(requirement, format!("failed: {error}"), target, false),
    }
}

/// Measure directly, through nginx and through Caddy.
pub(crate) async fn measure(nox: &Nox, scratch: &Path) -> Vec<Check> {
    let mut checks = vec![judged("direct", line_latencies(nox.port, &nox.token).await)];
    type Starter = fn(&Path, &Path, u16) -> Result<Proxy, Failure>;
    let proxies: [(&str, &str, Starter); 2] = [
        (
            "nginx",
            "through nginx (packaging/nginx/nox.conf)",
            start_nginx,
        ),
        ("caddy", "through Caddy (packaging/Caddyfile)", start_caddy),
    ];
    for (program, what, start) in proxies {
        let Some(path) = find(program) else {
            checks.push(Check::skipped(
                format!("streaming: job prints a line → client has it, {what}"),
                "skipped (not installed)",
            ));
            continue;
        };
        let measured = async {
            let mut proxy = start(&path, &scratch.join(program), nox.port)?;
            wait_proxy(&mut proxy).await?;
            line_latencies(proxy.port, &nox.token).await
        }
        .await;
        checks.push(judged(what, measured));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_timestamp_keeps_its_nanoseconds() {
        assert_eq!(
            parse_timestamp("1700000000.000001234\n"),
            Some(Duration::new(1_700_000_000, 1_234))
        );
        assert_eq!(
            parse_timestamp("12.5"),
            Some(Duration::new(12, 500_000_000))
        );
        assert_eq!(parse_timestamp("soon"), None);
    }

    #[test]
    fn the_shipped_nginx_site_is_adapted_to_plain_http_on_loopback() {
        let shipped = std::fs::read_to_string(packaging("nginx/nox.conf")).unwrap();
        let site = nginx_site(&shipped, 18081, 18080).unwrap();
        assert!(site.contains("listen 127.0.0.1:18081;"));
        assert!(site.contains("server 127.0.0.1:18080;"));
        assert!(!site.contains("ssl"), "TLS left in: {site}");
        assert!(
            !site.contains("listen 80"),
            "the redirect server left in: {site}"
        );
        assert!(site.contains("proxy_buffering off;"));
    }
}
