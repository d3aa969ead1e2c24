//! HTTP: slow and huge requests, floods of idle connections, malformed bodies, wrong
//! methods and content types, authentication bypass attempts, pipelining and request
//! smuggling shapes. Bad input gets a 4xx — in the uniform JSON shape wherever the frontend
//! answers itself — never a 5xx; and the daemons serve on afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nox_e2e::{Nox, assert_error_shape, random_hex, unique};
use serde_json::{Value, json};

use super::common::{self, assert_serving, marker, stdout};

/// An instance with a 2 s header timeout, for the slow cases.
fn slow() -> &'static Nox {
    static SLOW: OnceLock<Nox> = OnceLock::new();
    SLOW.get_or_init(|| {
        Nox::builder()
            .frontend_toml("header_read_timeout_s = 2\nbody_read_timeout_s = 3")
            .start()
    })
}

fn port(nox: &Nox) -> u16 {
    nox.url()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the instance's URL ends with its port")
}

fn connect(nox: &Nox) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port(nox))).expect("connect to the frontend");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream
}

/// Writes `bytes` on a fresh connection and reads until the server closes it (or 20 s).
fn exchange(nox: &Nox, bytes: &[u8]) -> String {
    let mut stream = connect(nox);
    let _ = stream.write_all(bytes);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// The status of every reply in a (possibly pipelined) raw exchange, read in sequence by
/// their `Content-Length` (or chunked framing).
fn statuses(raw: &str) -> Vec<u16> {
    let mut found = Vec::new();
    let mut rest = raw;
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let Some(status) = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|line| line.get(..3)?.parse().ok())
        else {
            break;
        };
        found.push(status);
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse::<usize>().ok());
        rest = match length {
            Some(length) => after.get(length..).unwrap_or_default(),
            None if lower.contains("transfer-encoding: chunked") => after
                .split_once("\r\n0\r\n\r\n")
                .map_or("", |(_, next)| next),
            None => "",
        };
    }
    found
}

/// The body of a one-reply raw exchange, as JSON.
fn body_json(raw: &str) -> Value {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body.trim())
        .unwrap_or_else(|error| panic!("not a JSON body ({error}): {raw:?}"))
}

/// A request head (and body) with the token, `Connection: close`.
fn request(nox: &Nox, method: &str, target: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        nox.token(),
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn slow_headers_are_cut_off_at_the_header_timeout() {
    let nox = slow();
    let mut stream = connect(nox);
    stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .expect("timeout");
    let started = Instant::now();
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let mut closed_after = None;
    let mut buffer = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(10) {
        if stream.write_all(b"X-Slow: a\r\n").is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        match stream.read(&mut buffer) {
            Ok(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("a trickled header block was never cut off");
    assert!(
        closed_after < Duration::from_secs(5),
        "cut off after {closed_after:?}"
    );
    assert_serving(nox);
}

#[test]
fn a_slowly_trickled_body_is_cut_off_by_a_timeout() {
    let nox = slow();
    let mut stream = connect(nox);
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let head = format!(
        "POST /run_sh HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        nox.token()
    );
    stream.write_all(head.as_bytes()).expect("write the head");
    let started = Instant::now();
    let mut cut_off = None;
    let mut buffer = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(12) {
        if stream.write_all(b" ").is_err() {
            cut_off = Some(started.elapsed());
            break;
        }
        match stream.read(&mut buffer) {
            Ok(_) => {
                cut_off = Some(started.elapsed());
                break;
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                cut_off = Some(started.elapsed());
                break;
            }
        }
    }
    drop(stream);
    assert!(
        cut_off.is_some(),
        "a body trickled at 5 bytes/s was still being read after 12 s: no body timeout holds the connection (and, for uploads, an executor connection and a temp file)"
    );
    assert_serving(nox);
}

#[test]
fn an_upload_that_stalls_is_answered_408_in_the_uniform_shape() {
    let nox = slow();
    let mut stream = connect(nox);
    let head = format!(
        "PUT /files/stalled.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n",
        nox.token()
    );
    stream.write_all(head.as_bytes()).expect("write the head");
    stream
        .write_all(&[b'x'; 1000])
        .expect("write some of the body");
    let started = Instant::now();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"error\":\"request_timeout\""), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_serving(nox);
}

#[test]
fn a_header_block_over_the_limit_is_answered_431_in_the_uniform_shape() {
    let nox = Nox::shared();
    let big = format!("X-Big: {}", "a".repeat(20 * 1024));
    let raw = exchange(nox, &request(nox, "GET", "/files", &[&big], b""));
    assert_eq!(statuses(&raw), vec![431], "{raw:.300}");
    let body = body_json(&raw);
    assert_error_shape(&body);
    assert_eq!(body["error"], "headers_too_large");
    assert_serving(nox);
}

#[test]
fn a_huge_header_block_is_answered_431_in_the_uniform_shape() {
    let nox = Nox::shared();
    let big = format!("X-Huge: {}", "a".repeat(200 * 1024));
    let raw = exchange(nox, &request(nox, "GET", "/health", &[&big], b""));
    assert_eq!(statuses(&raw), vec![431], "{raw:.300}");
    assert_error_shape(&body_json(&raw));
    assert_serving(nox);
}

#[test]
fn too_many_header_fields_are_refused_in_the_uniform_shape() {
    let nox = Nox::shared();
    let many: Vec<String> = (0..300).map(|n| format!("X-Field-{n}: {n}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let raw = exchange(nox, &request(nox, "GET", "/health", &many, b""));
    let status = statuses(&raw);
    assert!(
        status.len() == 1 && (400..500).contains(&status[0]),
        "{raw:.300}"
    );
    assert_error_shape(&body_json(&raw));
    assert_serving(nox);
}

#[test]
fn a_chunked_json_body_over_the_limit_is_answered_413() {
    let nox = Nox::shared();
    let mut stream = connect(nox);
    let head = format!(
        "POST /run_sh HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        nox.token()
    );
    stream.write_all(head.as_bytes()).expect("write the head");
    let chunk = vec![b' '; 64 * 1024];
    let mut raw = Vec::new();
    // 5 MiB (over the 4 MiB default), until the server answers or stops reading.
    for _ in 0..80 {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        if stream.write_all(&piece).is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let _ = stream.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    assert_eq!(statuses(&raw), vec![413], "{raw:.300}");
    assert_eq!(body_json(&raw)["error"], "payload_too_large");
    assert_serving(nox);
}

#[test]
fn five_hundred_idle_keep_alive_connections_do_not_stop_other_clients() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let mut idle = Vec::new();
    for n in 0..500 {
        let mut stream = connect(nox);
        if n % 2 == 0 {
            // Half have had one request answered and stay open (keep-alive)...
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .expect("write");
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
        }
        // ...half never sent a byte.
        idle.push(stream);
    }
    let started = Instant::now();
    assert_serving(nox);
    let reply = nox.run_py("print(6 * 7)");
    assert_eq!(stdout(&reply), "42\n", "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "other clients waited {:?}",
        started.elapsed()
    );
    drop(idle);
    assert_serving(nox);
}

#[test]
fn malformed_json_bodies_are_400_in_the_uniform_shape() {
    let nox = Nox::shared();
    let deep = format!(
        "{{\"cmd\": {}\"x\"{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", b"{\"cmd\": \"\xff\xfe\"}".to_vec()),
        ("nested 100000 deep", deep.into_bytes()),
        ("trailing garbage", b"{\"cmd\": \"echo\"} trailing".to_vec()),
        (
            "duplicate keys",
            b"{\"cmd\": \"echo a\", \"cmd\": \"echo b\"}".to_vec(),
        ),
        (
            "a number out of range",
            b"{\"cmd\": \"echo\", \"timeout_s\": 1e400}".to_vec(),
        ),
        ("NaN", b"{\"cmd\": \"echo\", \"timeout_s\": NaN}".to_vec()),
        ("an empty body", Vec::new()),
        ("null", b"null".to_vec()),
        ("an array", b"[\"echo\"]".to_vec()),
        ("a string", b"\"echo\"".to_vec()),
        ("cmd of the wrong type", b"{\"cmd\": {\"x\": 1}}".to_vec()),
        (
            "limits of the wrong type",
            b"{\"cmd\": \"echo\", \"limits\": [1]}".to_vec(),
        ),
        (
            "a negative limit",
            b"{\"cmd\": \"echo\", \"limits\": {\"cpu_s\": -1}}".to_vec(),
        ),
        (
            "a NUL in the command",
            b"{\"cmd\": \"echo a\\u0000b\"}".to_vec(),
        ),
        ("a lone surrogate", b"{\"cmd\": \"echo \\ud800\"}".to_vec()),
    ];
    let mut wrong = Vec::new();
    for (what, body) in cases {
        let reply = nox.request(
            "POST",
            "/run_sh",
            &[("Content-Type", "application/json")],
            Some(body),
        );
        let shaped = serde_json::from_slice::<Value>(&reply.body).is_ok_and(|body| {
            body["error"].is_string() && body["message"].is_string() && body.get("detail").is_some()
        });
        if reply.status != 400 || !shaped {
            wrong.push(format!(
                "{what}: HTTP {} {:.200}",
                reply.status,
                reply.text()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

#[test]
fn malformed_multipart_bodies_are_400_and_leave_no_file_behind() {
    let nox = Nox::shared();
    let name = unique("mp");
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("no closing boundary", "multipart/form-data; boundary=XyZ".into(), b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nhalf a file".to_vec()),
        ("another boundary than announced", "multipart/form-data; boundary=XyZ".into(), b"--AbC\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--AbC--\r\n".to_vec()),
        ("no part headers", "multipart/form-data; boundary=XyZ".into(), b"--XyZ\r\n\r\nx\r\n--XyZ--\r\n".to_vec()),
        ("garbage", "multipart/form-data; boundary=XyZ".into(), b"\x00\x01\x02 not multipart at all".to_vec()),
        ("an empty body", "multipart/form-data; boundary=XyZ".into(), Vec::new()),
        ("part headers that never end", "multipart/form-data; boundary=XyZ".into(), format!("--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\nX-Long: {}", "a".repeat(100_000)).into_bytes()),
    ];
    let mut wrong = Vec::new();
    for (what, content_type, body) in cases {
        let reply = nox.client().raw(
            "POST",
            &format!("/put?path={name}/{}.bin", what.replace(' ', "-")),
            &[&format!("Content-Type: {content_type}")],
            &body,
        );
        let shaped = serde_json::from_slice::<Value>(&reply.body)
            .is_ok_and(|body| body["error"].is_string());
        if reply.status != 400 || !shaped {
            wrong.push(format!(
                "{what}: HTTP {} {:.200}",
                reply.status,
                reply.text()
            ));
        }
    }
    let dir = nox.workspace("default").join(&name);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(left.is_empty(), "files left by refused uploads: {left:?}");
    assert_serving(nox);
}

#[test]
fn wrong_methods_are_405_with_an_allow_header() {
    let nox = Nox::shared();
    let mut wrong = Vec::new();
    for (method, target) in [
        ("PATCH", "/files/x.txt"),
        ("POST", "/files/x.txt"),
        ("PUT", "/run_sh"),
        ("GET", "/run_py"),
        ("POST", "/health"),
        ("DELETE", "/files"),
        ("OPTIONS", "/run_py"),
        ("TRACE", "/health"),
        ("FOO", "/run_sh"),
        ("PROPFIND", "/files"),
        ("GET", "/put"),
    ] {
        let raw = exchange(nox, &request(nox, method, target, &[], b""));
        let allow = raw
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("\r\nallow: ");
        let ok = statuses(&raw) == vec![405]
            && allow
            && body_json(&raw)["error"] == "method_not_allowed";
        if !ok {
            wrong.push(format!("{method} {target}: {raw:.200}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

#[test]
fn wrong_content_types_are_415() {
    let nox = Nox::shared();
    let json_body = json!({ "cmd": "echo never" }).to_string().into_bytes();
    let mut wrong = Vec::new();
    for (target, content_type) in [
        ("/run_sh", "text/plain"),
        ("/run_sh", "application/x-www-form-urlencoded"),
        ("/run_sh", "multipart/form-data; boundary=x"),
        ("/run_sh", "application/jsonp"),
        ("/run_sh", "application/json-seq"),
        ("/run_sh", "text/json"),
        ("/run_py", "application/xml"),
        ("/put?path=ct.txt", "text/plain"),
        ("/put?path=ct.txt", "application/json"),
        ("/put?path=ct.txt", "multipart/form-data"),
        ("/put?path=ct.txt", "application/octet-stream"),
    ] {
        let reply = nox.client().raw(
            "POST",
            target,
            &[&format!("Content-Type: {content_type}")],
            &json_body,
        );
        let code = serde_json::from_slice::<Value>(&reply.body)
            .map(|body| body["error"].clone())
            .unwrap_or_default();
        if reply.status != 415 || code != "unsupported_media_type" {
            wrong.push(format!(
                "{target} {content_type}: HTTP {} {:.200}",
                reply.status,
                reply.text()
            ));
        }
    }
    assert!(!nox.workspace("default").join("ct.txt").exists());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

/// A command that leaves `name` in the workspace if it ever runs.
fn tripwire(name: &str) -> Vec<u8> {
    json!({ "cmd": format!("touch {name}") })
        .to_string()
        .into_bytes()
}

fn assert_not_tripped(nox: &Nox, name: &str) {
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !nox.workspace("default").join(name).exists(),
        "a request that should have been refused ran its job"
    );
}

#[test]
fn bearer_values_that_differ_from_the_token_in_any_way_are_refused() {
    let nox = Nox::shared();
    let token = nox.token();
    let name = unique("tripwire");
    let body = tripwire(&name);
    // The default token starts `tok-`: a Cyrillic `о` (U+043E) for the Latin one.
    let lookalike = token.replacen('o', "\u{043e}", 1);
    assert_ne!(lookalike, token);
    let values = vec![
        format!("Bearer {}", token.to_uppercase()),
        format!("Bearer x{token}"),
        format!("Bearer {token}x"),
        format!("Bearer {}", &token[1..]),
        format!("Bearer {}", &token[..token.len() - 1]),
        format!("Bearer {token} {token}"),
        format!("Bearer {token},Bearer {token}"),
        format!("Bearer {token}%00"),
        format!("Bearer {lookalike}"),
        format!("Bearer \"{token}\""),
        format!("Bearer: {token}"),
        format!("Bearer={token}"),
        format!("Bearer{token}"),
        format!("Basic {token}"),
        format!("Digest {token}"),
        format!("Token {token}"),
        format!("Bearer {}", nox_e2e::random_hex(token.len() / 2)),
        token.to_owned(),
    ];
    let mut wrong = Vec::new();
    for value in &values {
        let reply = nox.client().with_token(None).raw(
            "POST",
            "/run_sh",
            &[
                &format!("Authorization: {value}"),
                "Content-Type: application/json",
            ],
            &body,
        );
        if reply.status != 401 {
            wrong.push(format!(
                "Authorization: {value}: HTTP {} {:.200}",
                reply.status,
                reply.text()
            ));
        }
    }
    assert_not_tripped(nox, &name);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

#[test]
fn two_authorization_headers_are_refused_even_when_one_or_both_are_right() {
    let nox = Nox::shared();
    let name = unique("tripwire");
    let body = tripwire(&name);
    let right = format!("Authorization: Bearer {}", nox.token());
    for pair in [
        [right.as_str(), "Authorization: Bearer wrong"],
        ["Authorization: Bearer wrong", right.as_str()],
        [right.as_str(), right.as_str()],
    ] {
        let reply = nox.client().with_token(None).raw(
            "POST",
            "/run_sh",
            &[pair[0], pair[1], "Content-Type: application/json"],
            &body,
        );
        assert_eq!(reply.status, 401, "{pair:?}: {}", reply.text());
    }
    assert_not_tripped(nox, &name);
    assert_serving(nox);
}

#[test]
fn a_token_in_the_query_a_cookie_or_another_header_is_not_a_token() {
    let nox = Nox::shared();
    let token = nox.token();
    let name = unique("tripwire");
    let body = tripwire(&name);
    let client = nox.client().with_token(None);
    let attempts = [
        (format!("/run_sh?token={token}"), String::new()),
        (format!("/run_sh?access_token={token}"), String::new()),
        ("/run_sh".to_owned(), format!("Cookie: token={token}")),
        ("/run_sh".to_owned(), format!("X-Api-Key: {token}")),
        ("/run_sh".to_owned(), format!("X-Auth-Token: {token}")),
        (
            "/run_sh".to_owned(),
            format!("Proxy-Authorization: Bearer {token}"),
        ),
        (
            "/run_sh".to_owned(),
            format!("X-Forwarded-Authorization: Bearer {token}"),
        ),
    ];
    for (target, header) in &attempts {
        let mut headers = vec!["Content-Type: application/json"];
        if !header.is_empty() {
            headers.push(header);
        }
        let reply = client.raw("POST", target, &headers, &body);
        assert_eq!(reply.status, 401, "{target} {header}: {}", reply.text());
    }
    assert_not_tripped(nox, &name);
    assert_serving(nox);
}

#[test]
fn path_tricks_never_reach_a_job_without_a_token() {
    let nox = Nox::shared();
    let name = unique("tripwire");
    let body = tripwire(&name);
    let client = nox.client().with_token(None);
    let absolute = format!("{}/run_sh", nox.url());
    let targets = [
        "//run_sh",
        "/run_sh/",
        "/RUN_SH",
        "/Run_Sh",
        "/%2frun_sh",
        "/%72un_sh",
        "/run%5fsh",
        "/run_sh%00",
        "/run_sh%20",
        "/./run_sh",
        "/files/../run_sh",
        "/health/../run_sh",
        "/run_sh;.js",
        "/run_sh?",
        "/run_sh#x",
        "/run_sh/.",
        "/%2e/run_sh",
        "/run_py/../run_sh",
        absolute.as_str(),
    ];
    let mut wrong = Vec::new();
    for target in targets {
        let reply = client.raw("POST", target, &["Content-Type: application/json"], &body);
        // Any refusal will do (a 405 names the methods of a route, nothing more).
        if !(400..500).contains(&reply.status) {
            wrong.push(format!(
                "{target}: HTTP {} {:.200}",
                reply.status,
                reply.text()
            ));
        }
    }
    assert_not_tripped(nox, &name);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

#[test]
fn pipelined_requests_are_answered_in_order_and_authorization_does_not_carry_over() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let name = unique("tripwire");
    let word = format!("pipelined-{}", random_hex(4));
    let run = json!({ "cmd": format!("echo {word}") }).to_string();
    let trip = String::from_utf8(tripwire(&name)).expect("UTF-8");
    let token = nox.token();
    let pipeline = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /run_sh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{run}\
         POST /run_sh HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{trip}\
         GET /files/no-such-file-{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n\
         GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        run.len(),
        trip.len()
    );
    let raw = exchange(nox, pipeline.as_bytes());
    assert_eq!(statuses(&raw), vec![200, 200, 401, 404, 200], "{raw}");
    assert!(raw.contains(&word), "{raw}");
    assert_not_tripped(nox, &name);
    assert_serving(nox);
}

#[test]
fn ambiguous_message_framing_is_refused_and_nothing_smuggled_runs() {
    let nox = Nox::shared();
    let token = nox.token();
    let mut wrong = Vec::new();
    let framings = [
        (
            "content-length and chunked",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "chunked and content-length",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        ),
        (
            "two different content-lengths",
            "Content-Length: 0\r\nContent-Length: 5\r\n",
        ),
        (
            "an unknown transfer coding",
            "Transfer-Encoding: xchunked\r\n",
        ),
        (
            "chunked then identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        ("a content-length with a sign", "Content-Length: +0\r\n"),
    ];
    for (what, framing) in framings {
        let name = unique("smuggled");
        let inner = String::from_utf8(tripwire(&name)).expect("UTF-8");
        let bytes = format!(
            "POST /health HTTP/1.1\r\nHost: x\r\n{framing}\r\n0\r\n\r\n\
             POST /run_sh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        let raw = exchange(nox, bytes.as_bytes());
        let status = statuses(&raw);
        std::thread::sleep(Duration::from_millis(300));
        if nox.workspace("default").join(&name).exists() {
            wrong.push(format!("{what}: the smuggled request ran ({status:?})"));
        }
        if status.iter().any(|status| *status >= 500) {
            wrong.push(format!("{what}: {status:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

#[test]
fn garbage_and_foreign_protocols_never_get_a_5xx() {
    let nox = Nox::shared();
    let inputs: Vec<Vec<u8>> = vec![
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET /health HTTP/1.0\r\n\r\n".to_vec(),
        b"GET /health\r\n\r\n".to_vec(),
        b"G\x00T /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n".to_vec(),
        b"GET /health HTTP/1.1\r\nHost: x\r\n Folded: continuation\r\n\r\n".to_vec(),
        b"GET /health HTTP/1.1\nHost: x\n\n".to_vec(),
        (0..4096u32)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
    ];
    for input in inputs {
        let raw = exchange(nox, &input);
        assert!(
            statuses(&raw).iter().all(|status| *status < 500),
            "{:?} got {raw:.300}",
            String::from_utf8_lossy(&input[..input.len().min(40)])
        );
    }
    assert_serving(nox);
}

#[test]
fn a_very_long_request_target_or_path_is_refused_without_a_5xx() {
    let nox = Nox::shared();
    let mut wrong = Vec::new();
    for target in [
        format!("/files/{}", "a".repeat(100 * 1024)),
        format!("/files/{}", "a".repeat(300)),
        format!("/files/{}", "a/".repeat(600)),
        format!("/files?prefix={}", "b".repeat(5000)),
        format!("/{}", "x".repeat(60 * 1024)),
        format!("/files/{}", "%2e".repeat(5000)),
    ] {
        let raw = exchange(nox, &request(nox, "GET", &target, &[], b""));
        let status = statuses(&raw);
        if status.len() != 1 || !(400..500).contains(&status[0]) {
            wrong.push(format!("{target:.60}: {raw:.200}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

#[test]
fn random_malformed_requests_never_get_a_5xx() {
    let nox = Nox::shared();
    let seed = u64::from_str_radix(&random_hex(8), 16).unwrap_or(1) | 1;
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "X",
    ];
    let paths = [
        "/run_sh",
        "/run_py",
        "/put?path=",
        "/files/",
        "/files?prefix=",
        "/health",
        "/",
        "/files",
    ];
    let fragments = [
        "..", "%2e", "%2f", "%00", "%ff", "/", "a", "%", "%zz", "+", "?", "&", "=", "\u{e9}",
    ];
    let types = [
        "application/json",
        "multipart/form-data; boundary=b",
        "text/plain",
        "",
        "application/json; charset=x",
    ];
    let bodies: [&[u8]; 7] = [
        b"",
        b"{",
        b"{\"cmd\": 1}",
        b"{\"code\": null}",
        b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--b",
        b"\xff\xfe\xfd",
        b"{\"cmd\": \"\", \"limits\": {\"memory_mb\": \"x\"}}",
    ];
    let mut wrong = Vec::new();
    for _ in 0..200 {
        let pick = |n: u64, len: usize| usize::try_from(n % len as u64).unwrap_or(0);
        let method = methods[pick(next(), methods.len())];
        let mut target = paths[pick(next(), paths.len())].to_owned();
        for _ in 0..pick(next(), 6) {
            target.push_str(fragments[pick(next(), fragments.len())]);
        }
        let content_type = types[pick(next(), types.len())];
        let body = bodies[pick(next(), bodies.len())];
        let mut headers = Vec::new();
        if !content_type.is_empty() {
            headers.push(format!("Content-Type: {content_type}"));
        }
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let raw = exchange(nox, &request(nox, method, &target, &headers, body));
        let status = statuses(&raw);
        if status.iter().any(|status| *status >= 500) {
            wrong.push(format!(
                "{method} {target} ({content_type}, {body:?}): {raw:.200}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "seed {seed:#x}: 5xx for bad input:\n{}",
        wrong.join("\n")
    );
    assert_serving(nox);
}

#[test]
fn a_client_that_goes_away_mid_job_leaves_no_process_behind() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let marker = marker();
    let body = json!({ "cmd": format!("sleep {marker}"), "timeout_s": 30 }).to_string();
    let mut stream = connect(nox);
    stream
        .write_all(&request(
            nox,
            "POST",
            "/run_sh",
            &["Content-Type: application/json"],
            body.as_bytes(),
        ))
        .expect("write the request");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !nox_e2e::processes_with(&marker).is_empty(),
        "the job did not start"
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(stream);
    common::assert_gone(
        &marker,
        &json!({ "cmd": "sleep", "client": "went away after 1 s" }),
    );
    assert_serving(nox);
}

#[test]
fn past_max_connections_the_oldest_idle_connection_gives_way_to_a_new_client() {
    static SMALL: std::sync::OnceLock<Nox> = std::sync::OnceLock::new();
    let nox = SMALL.get_or_init(|| {
        Nox::builder()
            .frontend_env("NOX_FRONTEND__MAX_CONNECTIONS", "16")
            .start()
    });
    // Sixteen keep-alive connections, each idle after one answered request: the bound.
    let mut idle = Vec::new();
    for _ in 0..16 {
        let mut stream = connect(nox);
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("write");
        let mut buffer = [0u8; 4096];
        assert!(stream.read(&mut buffer).expect("an answer") > 0);
        idle.push(stream);
    }
    // A new client is served at once (not after the idle timeout of the others)...
    let started = Instant::now();
    let reply = nox.client().health();
    assert_eq!(reply.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a new client waited {:?} behind idle connections",
        started.elapsed()
    );
    // ...because the oldest idle connection was closed for it.
    let oldest = &mut idle[0];
    oldest
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buffer = [0u8; 16];
    assert_eq!(
        oldest.read(&mut buffer).unwrap_or(0),
        0,
        "the oldest idle connection is still open"
    );
    drop(idle);
    assert_serving(nox);
}
