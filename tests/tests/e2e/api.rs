//! The file routes and the error shape of every 4xx.

use nox_e2e::{Nox, assert_error_shape, unique};
use serde_json::json;

#[test]
fn a_file_can_be_written_listed_read_and_deleted() {
    let nox = Nox::shared();
    let dir = unique("files");
    let path = format!("{dir}/sub/data.bin");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();

    let saved = nox.request(
        "PUT",
        &format!("/files/{path}"),
        &[("Content-Type", "application/octet-stream")],
        Some(bytes.clone()),
    );
    assert_eq!(
        saved.expect_json(200),
        json!({ "saved": path, "bytes": bytes.len() })
    );

    let got = nox.request("GET", &format!("/files/{path}"), &[], None);
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(
        got.body == bytes,
        "the downloaded bytes differ from the uploaded ones"
    );

    let listing = nox
        .request("GET", &format!("/files?prefix={dir}"), &[], None)
        .expect_json(200);
    assert_eq!(listing["truncated"], false, "{listing}");
    let files = listing["files"].as_array().expect("files");
    let entry = files
        .iter()
        .find(|entry| entry["path"] == path)
        .unwrap_or_else(|| panic!("{path} not listed: {listing}"));
    assert_eq!(entry["type"], "file", "{listing}");
    assert_eq!(entry["size"], bytes.len(), "{listing}");
    assert!(
        entry["modified_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000),
        "{listing}"
    );
    assert!(
        files
            .iter()
            .any(|entry| entry["path"] == format!("{dir}/sub") && entry["type"] == "dir"),
        "{listing}"
    );

    let deleted = nox
        .request("DELETE", &format!("/files/{path}"), &[], None)
        .expect_json(200);
    assert_eq!(deleted, json!({ "deleted": path }));
    let gone = nox.request("GET", &format!("/files/{path}"), &[], None);
    assert_eq!(gone.status, 404, "{}", gone.text());
    assert_error_shape(&gone.json());
}

#[test]
fn a_job_sees_uploaded_files_and_the_api_sees_files_a_job_wrote() {
    let nox = Nox::shared();
    let name = unique("shared-file");
    nox.put(&format!("{name}.in"), b"from the api")
        .expect_json(200);
    let reply = nox.run_sh(&format!("cat {name}.in; echo from a job > {name}.out"));
    assert_eq!(reply["stdout"], "from the api", "{reply}");
    let got = nox.request("GET", &format!("/files/{name}.out"), &[], None);
    assert_eq!(got.text(), "from a job\n");
}

#[test]
fn upload_replies_with_the_normalised_path_and_size() {
    let nox = Nox::shared();
    let dir = unique("put");
    let reply = nox
        .put(&format!("{dir}/a/b.txt"), b"12345")
        .expect_json(200);
    assert_eq!(
        reply,
        json!({ "saved": format!("{dir}/a/b.txt"), "bytes": 5 })
    );
    let reply = nox.put(&format!("{dir}/empty.txt"), b"").expect_json(200);
    assert_eq!(reply["bytes"], 0, "{reply}");
    // The seed's upload overwrote an existing file.
    nox.put(&format!("{dir}/a/b.txt"), b"xy").expect_json(200);
    assert_eq!(
        nox.request("GET", &format!("/files/{dir}/a/b.txt"), &[], None)
            .text(),
        "xy"
    );
}

#[test]
fn an_upload_without_the_f_field_or_without_a_path_is_a_400() {
    let nox = Nox::shared();
    let (content_type, body) = nox_e2e::multipart("wrong", "x.txt", b"x");
    let reply = nox.request(
        "POST",
        "/put?path=nofield.txt",
        &[("Content-Type", &content_type)],
        Some(body),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_error_shape(&reply.json());
    let (content_type, body) = nox_e2e::multipart("f", "x.txt", b"x");
    let reply = nox.request(
        "POST",
        "/put",
        &[("Content-Type", &content_type)],
        Some(body),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_error_shape(&reply.json());
}

#[test]
fn every_error_has_the_uniform_json_shape() {
    let nox = Nox::shared();
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<Vec<u8>>,
        u16,
    );
    let cases: Vec<Case> = vec![
        ("GET", "/no-such-route", vec![], None, 404),
        ("GET", "/files/no-such-file.txt", vec![], None, 404),
        ("GET", "/run_sh", vec![], None, 405),
        ("DELETE", "/run_py", vec![], None, 405),
        (
            "POST",
            "/run_sh",
            vec![("Content-Type", "application/json")],
            Some(b"{not json".to_vec()),
            400,
        ),
        (
            "POST",
            "/run_sh",
            vec![("Content-Type", "application/json")],
            Some(b"{}".to_vec()),
            400,
        ),
        (
            "POST",
            "/run_py",
            vec![("Content-Type", "application/json")],
            Some(br#"{"code": 5}"#.to_vec()),
            400,
        ),
        (
            "POST",
            "/run_sh",
            vec![("Content-Type", "text/plain")],
            Some(br#"{"cmd": "echo x"}"#.to_vec()),
            415,
        ),
        (
            "POST",
            "/put?path=x.txt",
            vec![("Content-Type", "application/json")],
            Some(b"{}".to_vec()),
            415,
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, headers, body, status) in cases {
        let reply = nox.request(method, path, &headers, body);
        let shaped = serde_json::from_slice::<serde_json::Value>(&reply.body).is_ok_and(|body| {
            body["error"].is_string() && body["message"].is_string() && body.get("detail").is_some()
        });
        if reply.status != status || !shaped {
            wrong.push(format!(
                "{method} {path}: expected {status}, got {} {}",
                reply.status,
                reply.text()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_bad_filename_for_run_py_is_an_invalid_path() {
    let nox = Nox::shared();
    for filename in ["../run.py", "/tmp/run.py", "a\u{0}b.py", ""] {
        let reply = nox.client().post_json(
            "/run_py",
            &json!({ "code": "print(1)", "filename": filename }),
        );
        assert_eq!(reply.status, 400, "filename {filename:?}: {}", reply.text());
        assert_error_shape(&reply.json());
    }
}

#[test]
fn a_limit_out_of_range_or_of_the_wrong_type_is_a_400() {
    let nox = Nox::shared();
    for body in [
        json!({ "cmd": "true", "timeout_s": -1 }),
        json!({ "cmd": "true", "timeout_s": "soon" }),
        json!({ "cmd": "true", "limits": { "memory_mb": -5 } }),
    ] {
        let reply = nox.client().post_json("/run_sh", &body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
        assert_error_shape(&reply.json());
    }
}
