//! Scaling out, on loopback: two independent instances (each its own executor, workspaces,
//! socket and port; the same four tokens) behind a real nginx running the shipped
//! `packaging/nginx/nox-scaleout.conf`, with its server lines pointed at the two frontends,
//! its TLS block replaced by a plain `listen` on 127.0.0.1 and its redirect server left out.
//!
//! nginx's `hash ... consistent` is a pure function of the key (the token) and the server
//! lines as written, and the ports are picked before the instances start, so this file
//! computes the ring itself ([`Ring`]): it knows before the first request which instance each
//! token must reach, and takes tokens that split two and two. Every run is the same case.
//!
//! Needs `/usr/sbin/nginx` (Debian's `nginx`, which `./test.sh` installs); without it the
//! tests say `SKIP` (and fail under CI).

use std::fs::{self, File};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nox_e2e::{Client, Nox, Reply, free_port, stdout_arrival};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Debian's nginx.
const NGINX: &str = "/usr/sbin/nginx";

/// The first server line of the shipped example; the test points it at each frontend.
const EXAMPLE_SERVER: &str = "10.0.0.11:8080";

/// How many tokens each instance gets under the hash.
const TOKENS_PER_INSTANCE: usize = 2;

/// How long nginx gets to listen after it is started.
const NGINX_START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// nginx's consistent hash, computed here
// ---------------------------------------------------------------------------------------

/// CRC-32 (IEEE, reflected), as `ngx_crc32_update`: start from `0xffff_ffff`, finish with
/// `!crc`.
fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn crc32(bytes: &[u8]) -> u32 {
    !crc32_update(0xffff_ffff, bytes)
}

/// The ring of `hash $key consistent` (nginx's `ngx_http_upstream_hash_module`, compatible
/// with Cache::Memcached::Fast): each server of weight 1 puts 160 points on it, point `j`
/// being `crc32(HOST "\0" PORT prev)` with `prev` the point before (little-endian, 0 for
/// the first); a key goes to the server of the first point at or after `crc32(key)`,
/// wrapping around.
#[derive(Debug)]
struct Ring {
    points: Vec<(u32, usize)>,
}

impl Ring {
    /// `servers` as written in the `server` lines: `host:port`.
    fn new(servers: &[String]) -> Ring {
        let mut points = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            let (host, port) = server.rsplit_once(':').expect("host:port");
            let base = crc32_update(
                crc32_update(crc32_update(0xffff_ffff, host.as_bytes()), &[0]),
                port.as_bytes(),
            );
            let mut previous = 0u32;
            for _ in 0..160 {
                let point = !crc32_update(base, &previous.to_le_bytes());
                points.push((point, index));
                previous = point;
            }
        }
        points.sort_unstable();
        points.dedup_by_key(|(point, _)| *point);
        Ring { points }
    }

    /// The index of the server `key` goes to.
    fn server_of(&self, key: &str) -> usize {
        let hash = crc32(key.as_bytes());
        let at = self.points.partition_point(|(point, _)| *point < hash);
        self.points[at % self.points.len()].1
    }
}

// ---------------------------------------------------------------------------------------
// nginx, started by this test
// ---------------------------------------------------------------------------------------

/// What nginx does when a token's host does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// As shipped: `max_fails=0`, `proxy_next_upstream off` (503 until the host is back).
    Strict,
    /// The documented alternative: no `max_fails=0`, `proxy_next_upstream error timeout`.
    FailOver,
}

/// `<repo>/packaging/nginx/nox-scaleout.conf`.
fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/nginx/nox-scaleout.conf")
}

/// `text` with everything from the line holding `begin` to the end of the line holding
/// `end` replaced by `with` (indented like the `begin` line).
fn replace_block(text: &str, begin: &str, end: &str, with: &str) -> String {
    let begin_at = text
        .find(begin)
        .unwrap_or_else(|| panic!("no `{begin}` in the shipped config"));
    let end_at = text[begin_at..]
        .find(end)
        .map(|at| begin_at + at + end.len())
        .unwrap_or_else(|| panic!("no `{end}` after `{begin}` in the shipped config"));
    format!("{}{with}{}", &text[..begin_at], &text[end_at..])
}

/// `text` with `from` (which must occur exactly once) replaced by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` should occur once in the shipped config"
    );
    text.replacen(from, to, 1)
}

/// The shipped site with its servers pointed at `upstreams`, listening on
/// `127.0.0.1:<port>` without TLS, and without the redirect server.
fn site(port: u16, upstreams: &[String], policy: Policy) -> String {
    let shipped = fs::read_to_string(shipped_config()).expect("read nox-scaleout.conf");
    let servers = &shipped[shipped.find("# BEGIN servers").expect("a servers block")..];
    let template = servers
        .lines()
        .find(|line| line.trim_start().starts_with("server "))
        .expect("a server line in the servers block");
    assert!(
        template.contains(EXAMPLE_SERVER),
        "the first server line names {EXAMPLE_SERVER}: {template}"
    );
    let template = match policy {
        Policy::Strict => template.to_owned(),
        Policy::FailOver => replace_once(template, " max_fails=0", ""),
    };
    let lines: Vec<String> = upstreams
        .iter()
        .map(|address| template.trim_start().replace(EXAMPLE_SERVER, address))
        .collect();

    let text = replace_block(
        &shipped,
        "# BEGIN plain-http-redirect",
        "# END plain-http-redirect",
        "",
    );
    let text = replace_block(
        &text,
        "# BEGIN tls",
        "# END tls",
        &format!("listen 127.0.0.1:{port};"),
    );
    let text = replace_block(
        &text,
        "# BEGIN servers",
        "# END servers",
        &lines.join("\n    "),
    );
    match policy {
        Policy::Strict => text,
        Policy::FailOver => replace_once(
            &text,
            "proxy_next_upstream off;",
            "proxy_next_upstream error timeout;",
        ),
    }
}

/// A running nginx (master in the foreground, one worker) in its own temporary directory:
/// configuration, pid file, logs and temporary files all there. Stopped by its pid on drop.
#[derive(Debug)]
struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with the site `site(port)` gives for a free port.
    fn start(site: impl FnOnce(u16) -> String) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("nox-e2e-nginx-")
            .tempdir()
            .expect("create a temporary directory");
        // Run as root, nginx's worker is `nobody`: it must reach its temporary directories.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        let path = dir.path().display().to_string();
        let port = free_port();
        fs::write(dir.path().join("site.conf"), site(port)).expect("write site.conf");
        let main = format!(
            "# written by tests/tests/e2e/scaleout.rs\n\
             worker_processes 1;\n\
             pid {path}/nginx.pid;\n\
             error_log {path}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             \x20   log_format nox '$request_method $uri $status upstream=$upstream_addr';\n\
             \x20   access_log {path}/access.log nox;\n\
             \x20   client_body_temp_path {path}/client_body;\n\
             \x20   proxy_temp_path {path}/proxy;\n\
             \x20   fastcgi_temp_path {path}/fastcgi;\n\
             \x20   uwsgi_temp_path {path}/uwsgi;\n\
             \x20   scgi_temp_path {path}/scgi;\n\
             \x20   include {path}/site.conf;\n\
             }}\n"
        );
        let config = dir.path().join("nginx.conf");
        fs::write(&config, main).expect("write nginx.conf");
        let output = File::create(dir.path().join("nginx.out")).expect("create nginx.out");
        let errors = output.try_clone().expect("clone a file handle");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {NGINX}: {error}"));
        let mut nginx = Nginx { child, port, dir };
        nginx.wait_listening();
        nginx
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + NGINX_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}) while starting\n{}", self.logs());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on 127.0.0.1:{} within {NGINX_START_TIMEOUT:?}\n{}",
                self.port,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client of nginx with `token`.
    fn client(&self, token: &str) -> Client {
        Client::at(self.port, Some(token))
    }

    /// nginx's own output, error log and access log, for failure messages.
    fn logs(&self) -> String {
        ["nginx.out", "error.log", "access.log"]
            .iter()
            .map(|name| {
                let text = fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- nginx {name} (tail) ---\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM: fast shutdown, the master stops its worker and exits.
            let pid = i32::try_from(self.child.id()).expect("pids fit in i32");
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Two instances behind nginx
// ---------------------------------------------------------------------------------------

/// A token, its workspace, and the instance nginx's hash gives it.
#[derive(Debug, Clone)]
struct Tenant {
    workspace: String,
    token: String,
    home: usize,
}

/// Two instances with the same tokens, and nginx in front of them.
#[derive(Debug)]
struct Cluster {
    // Dropped in order: nginx first, then the instances.
    nginx: Nginx,
    instances: [Option<Nox>; 2],
    /// Each instance's workspace root, kept after the instance is stopped.
    roots: [PathBuf; 2],
    tenants: Vec<Tenant>,
}

/// Two distinct free ports.
fn two_free_ports() -> [u16; 2] {
    let first = free_port();
    loop {
        let second = free_port();
        if second != first {
            return [first, second];
        }
    }
}

impl Cluster {
    /// Starts two instances on ports known in advance, with tokens chosen so that the
    /// hash gives each instance [`TOKENS_PER_INSTANCE`] of them, and nginx in front.
    /// Returns `None` (after saying SKIP) when nginx is not installed.
    fn start(test: &str, policy: Policy) -> Option<Cluster> {
        if !Path::new(NGINX).is_file() {
            nox_e2e::skip(
                test,
                &format!("nginx is not installed ({NGINX}; apt install nginx)"),
            );
            return None;
        }
        let ports = two_free_ports();
        let servers: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let ring = Ring::new(&servers);
        let mut tenants = Vec::new();
        let mut held = [0usize; 2];
        for index in 0.. {
            if held.iter().all(|count| *count == TOKENS_PER_INSTANCE) {
                break;
            }
            let token = format!("scaleout-{index:03}-5e1f0c4b9a7d2e8f3b6a1c0d");
            let home = ring.server_of(&token);
            if held[home] < TOKENS_PER_INSTANCE {
                held[home] += 1;
                tenants.push(Tenant {
                    workspace: format!("tenant{index:03}"),
                    token,
                    home,
                });
            }
        }
        let pairs: Vec<(&str, &str)> = tenants
            .iter()
            .map(|tenant| (tenant.workspace.as_str(), tenant.token.as_str()))
            .collect();
        // Both at once: the ports were picked ahead, keep the time until they are bound short.
        let [first, second] = std::thread::scope(|scope| {
            ports
                .map(|port| {
                    let pairs = &pairs;
                    scope.spawn(move || Nox::builder().tokens(pairs).port(port).start())
                })
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
        });
        let roots = [first.workspace_root(), second.workspace_root()];
        let nginx = Nginx::start(|port| site(port, &servers, policy));
        Some(Cluster {
            nginx,
            instances: [Some(first), Some(second)],
            roots,
            tenants,
        })
    }

    /// A running instance.
    fn instance(&self, index: usize) -> &Nox {
        self.instances[index]
            .as_ref()
            .unwrap_or_else(|| panic!("instance {index} was stopped"))
    }

    /// Stops both daemons of instance `index` (its directory goes with it).
    fn stop(&mut self, index: usize) {
        drop(self.instances[index].take());
    }

    /// `tenant`'s workspace on instance `index` (on disk, whether it exists or not).
    fn workspace_on(&self, index: usize, tenant: &Tenant) -> PathBuf {
        self.roots[index].join(&tenant.workspace)
    }

    /// Runs `pwd` for `tenant` through nginx and says on which instance it ran.
    fn instance_running(&self, tenant: &Tenant) -> usize {
        let reply = self.through_nginx(tenant).run_sh("pwd");
        self.instance_of_pwd(tenant, &reply)
    }

    fn instance_of_pwd(&self, tenant: &Tenant, reply: &Value) -> usize {
        assert_eq!(reply["returncode"], 0, "{reply}");
        let pwd = reply["stdout"].as_str().unwrap_or_default().trim_end();
        (0..2)
            .find(|&index| Path::new(pwd) == self.workspace_on(index, tenant))
            .unwrap_or_else(|| {
                panic!(
                    "{}'s job ran in {pwd}, in neither instance's workspace of it",
                    tenant.workspace
                )
            })
    }

    /// A client of nginx with `tenant`'s token.
    fn through_nginx(&self, tenant: &Tenant) -> Client {
        self.nginx.client(&tenant.token)
    }

    /// A client of instance `index` directly, with `tenant`'s token.
    fn direct(&self, index: usize, tenant: &Tenant) -> Client {
        self.instance(index).client_for(&tenant.workspace)
    }

    fn tenants_of(&self, index: usize) -> Vec<Tenant> {
        self.tenants
            .iter()
            .filter(|tenant| tenant.home == index)
            .cloned()
            .collect()
    }

    /// Uploads a file for every tenant through nginx; returns its name and bytes per tenant.
    fn put_one_file_each(&self) -> Vec<(String, Vec<u8>)> {
        self.tenants
            .iter()
            .map(|tenant| {
                let name = format!("{}.txt", tenant.workspace);
                let bytes = format!("the file of {}\n", tenant.workspace).into_bytes();
                let saved = self
                    .through_nginx(tenant)
                    .put(&name, &bytes)
                    .expect_json(200);
                assert_eq!(saved["saved"], name.as_str(), "{saved}");
                (name, bytes)
            })
            .collect()
    }
}

/// The error a stopped host's token gets from the shipped nginx: nox's shape, 503.
fn assert_host_unavailable(reply: &Reply, nginx: &Nginx) {
    assert_eq!(reply.status, 503, "{}\n{}", reply.text(), nginx.logs());
    assert!(
        reply.content_type.starts_with("application/json"),
        "content-type {}",
        reply.content_type
    );
    reply.expect_error(503, "executor_unavailable");
}

#[test]
fn two_instances_behind_nginx_keep_each_token_on_one_instance() {
    let test = "two_instances_behind_nginx_keep_each_token_on_one_instance";
    let Some(cluster) = Cluster::start(test, Policy::Strict) else {
        return;
    };

    // Each token's jobs run on the instance the hash gives it, every time, whichever way
    // the client spells the scheme.
    for tenant in &cluster.tenants {
        for _ in 0..5 {
            assert_eq!(
                cluster.instance_running(tenant),
                tenant.home,
                "{} reached the other instance\n{}",
                tenant.workspace,
                cluster.nginx.logs()
            );
        }
        for spelling in [
            format!("bearer {}", tenant.token),
            format!("BEARER   {}", tenant.token),
        ] {
            let reply = Client::at(cluster.nginx.port, None)
                .request(
                    "POST",
                    "/run_sh",
                    &[
                        ("Content-Type", "application/json"),
                        ("Authorization", &spelling),
                    ],
                    Some(json!({ "cmd": "pwd" }).to_string().into_bytes()),
                )
                .expect_json(200);
            assert_eq!(
                cluster.instance_of_pwd(tenant, &reply),
                tenant.home,
                "`Authorization: {spelling}` reached the other instance"
            );
        }
    }

    // A file put through nginx is found through nginx every time, and lives on exactly
    // one instance, its token's.
    let files = cluster.put_one_file_each();
    for (tenant, (name, bytes)) in cluster.tenants.iter().zip(&files) {
        for attempt in 0..10 {
            let reply =
                cluster
                    .through_nginx(tenant)
                    .request("GET", &format!("/files/{name}"), &[], None);
            assert_eq!(
                (reply.status, reply.body.as_slice()),
                (200, bytes.as_slice()),
                "GET {name} for {} through nginx, attempt {attempt}: {}",
                tenant.workspace,
                reply.text()
            );
        }
        for index in 0..2 {
            assert_eq!(
                cluster.workspace_on(index, tenant).join(name).is_file(),
                index == tenant.home,
                "{name} on instance {index} (its token's is {})",
                tenant.home
            );
        }
    }

    // The tokens are spread: after all these requests through nginx, each instance holds
    // workspaces, and only those of its own tokens.
    for index in 0..2 {
        let mut held: Vec<String> = fs::read_dir(&cluster.roots[index])
            .expect("read a workspace root")
            .map(|entry| {
                entry
                    .expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        held.sort();
        let expected: Vec<String> = cluster
            .tenants_of(index)
            .into_iter()
            .map(|tenant| tenant.workspace)
            .collect();
        assert_eq!(held, expected, "workspaces on instance {index}");
        assert_eq!(held.len(), TOKENS_PER_INSTANCE);
    }

    // Asked directly, the token's own instance has the file and the other has not (the
    // token is valid on both: the frontends share the token file).
    for (tenant, (name, bytes)) in cluster.tenants.iter().zip(&files) {
        for index in 0..2 {
            let direct =
                cluster
                    .direct(index, tenant)
                    .request("GET", &format!("/files/{name}"), &[], None);
            if index == tenant.home {
                assert_eq!(
                    (direct.status, &direct.body),
                    (200, bytes),
                    "{}",
                    direct.text()
                );
            } else {
                direct.expect_error(404, "not_found");
            }
        }
    }
}

#[test]
fn jobs_and_streamed_output_pass_through_nginx_for_every_token() {
    let test = "jobs_and_streamed_output_pass_through_nginx_for_every_token";
    let Some(cluster) = Cluster::start(test, Policy::Strict) else {
        return;
    };
    for tenant in &cluster.tenants {
        let client = cluster.through_nginx(tenant);
        let sh = client.run_sh("echo sh-$((6 * 7)); pwd");
        assert_eq!(sh["returncode"], 0, "{sh}");
        let pwd = format!(
            "sh-42\n{}\n",
            cluster.workspace_on(tenant.home, tenant).display()
        );
        assert_eq!(sh["stdout"], pwd.as_str(), "{sh}");
        let py = client.run_py("import os\nprint('py', 6 * 7, os.getcwd())");
        assert_eq!(py["returncode"], 0, "{py}");
        let expected = format!(
            "py 42 {}\n",
            cluster.workspace_on(tenant.home, tenant).display()
        );
        assert_eq!(py["stdout"], expected.as_str(), "{py}");

        // NDJSON: the two lines arrive through nginx as the job writes them, a second apart.
        let code =
            "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second', flush=True)\n";
        let events = client.stream_ndjson("/run_py", &json!({ "code": code }));
        assert_eq!(
            events.first().map(|(_, event)| event["type"].clone()),
            Some(json!("started")),
            "{events:?}"
        );
        let (first, second) = (
            stdout_arrival(&events, "first"),
            stdout_arrival(&events, "second"),
        );
        assert!(
            second.saturating_sub(first) >= Duration::from_millis(700),
            "{}: the first line arrived at {first:?}, the second at {second:?}: buffered",
            tenant.workspace
        );
        let (_, finished) = events.last().expect("events");
        assert_eq!(finished["type"], "finished", "{events:?}");
        assert_eq!(finished["returncode"], 0, "{finished}");
    }
}

#[test]
fn with_one_instance_stopped_the_tokens_of_the_other_still_work() {
    let test = "with_one_instance_stopped_the_tokens_of_the_other_still_work";
    let Some(mut cluster) = Cluster::start(test, Policy::Strict) else {
        return;
    };
    let files = cluster.put_one_file_each();
    cluster.stop(1);

    for (tenant, (name, bytes)) in cluster.tenants.iter().zip(&files) {
        for _ in 0..3 {
            let client = cluster.through_nginx(tenant);
            let job = client.post_json("/run_sh", &json!({ "cmd": "pwd" }));
            let file = client.request("GET", &format!("/files/{name}"), &[], None);
            if tenant.home == 0 {
                let reply = job.expect_json(200);
                assert_eq!(cluster.instance_of_pwd(tenant, &reply), 0);
                assert_eq!((file.status, &file.body), (200, bytes), "{}", file.text());
            } else {
                // Strict affinity: not sent to the other instance, where its files are not.
                assert_host_unavailable(&job, &cluster.nginx);
                assert_host_unavailable(&file, &cluster.nginx);
            }
        }
    }
    // Nothing of the stopped instance's tokens was created on the survivor.
    for tenant in cluster.tenants_of(1) {
        assert!(
            !cluster.workspace_on(0, &tenant).exists(),
            "{} got a workspace on the surviving instance",
            tenant.workspace
        );
    }
}

#[test]
fn a_balancer_set_to_fail_over_runs_a_stopped_instances_tokens_on_the_other_without_their_files() {
    let test = "a_balancer_set_to_fail_over_runs_a_stopped_instances_tokens_on_the_other_without_their_files";
    let Some(mut cluster) = Cluster::start(test, Policy::FailOver) else {
        return;
    };
    let files = cluster.put_one_file_each();
    cluster.stop(1);

    for (tenant, (name, bytes)) in cluster.tenants.iter().zip(&files) {
        let client = cluster.through_nginx(tenant);
        // Jobs without files work for every token: on the survivor.
        assert_eq!(cluster.instance_running(tenant), 0, "{}", tenant.workspace);
        let file = client.request("GET", &format!("/files/{name}"), &[], None);
        if tenant.home == 0 {
            assert_eq!((file.status, &file.body), (200, bytes), "{}", file.text());
        } else {
            // Its files stayed on the stopped instance: here it has an empty workspace.
            file.expect_error(404, "not_found");
        }
    }
}
