//! Paths: every file route refuses traversal, absolute paths, encoded tricks, NUL, and
//! symlinks planted by a job — and nothing outside the workspace is read, written or
//! deleted on the way.

use std::fs;

use nox_e2e::{Nox, Reply, unique};

/// Paths as they appear in a URL (already percent-encoded where they are), each of which
/// must be refused with 400 `invalid_path`.
const BAD_PATHS: [&str; 13] = [
    "../escape.txt",
    "../../../../etc/passwd",
    "a/../../escape.txt",
    "..",
    "%2e%2e/escape.txt",
    "%2E%2E%2Fescape.txt",
    "..%2Fescape.txt",
    "a%2F..%2F..%2Fescape.txt",
    "%2Fetc%2Fpasswd",
    "a%00b",
    "%00",
    "..%5Cescape.txt",
    "a%0Ab",
];

/// One request per file route for `path`, sent byte for byte.
fn every_route(nox: &Nox, path: &str) -> Vec<(String, Reply)> {
    let client = nox.client();
    let (content_type, multipart) = nox_e2e::multipart("f", "x.txt", b"planted");
    let content_type = format!("Content-Type: {content_type}");
    vec![
        (
            format!("GET /files/{path}"),
            client.raw("GET", &format!("/files/{path}"), &[], b""),
        ),
        (
            format!("PUT /files/{path}"),
            client.raw(
                "PUT",
                &format!("/files/{path}"),
                &["Content-Type: application/octet-stream"],
                b"planted",
            ),
        ),
        (
            format!("DELETE /files/{path}"),
            client.raw("DELETE", &format!("/files/{path}"), &[], b""),
        ),
        (
            format!("GET /files?prefix={path}"),
            client.raw("GET", &format!("/files?prefix={path}"), &[], b""),
        ),
        (
            format!("POST /put?path={path}"),
            client.raw(
                "POST",
                &format!("/put?path={path}"),
                &[&content_type],
                &multipart,
            ),
        ),
    ]
}

fn is_invalid_path(reply: &Reply) -> bool {
    reply.status == 400
        && serde_json::from_slice::<serde_json::Value>(&reply.body)
            .is_ok_and(|body| body["error"] == "invalid_path" && body["message"].is_string())
}

#[test]
fn traversal_absolute_encoded_and_nul_paths_are_refused_on_every_file_route() {
    let nox = Nox::shared();
    let mut wrong = Vec::new();
    for path in BAD_PATHS {
        for (what, reply) in every_route(nox, path) {
            if reply.text().contains("root:x:0:0") {
                wrong.push(format!("{what}: LEAKED /etc/passwd"));
            } else if !is_invalid_path(&reply) {
                wrong.push(format!("{what}: HTTP {} {}", reply.status, reply.text()));
            }
        }
    }
    for escaped in [
        nox.workspace_root().join("escape.txt"),
        nox.dir().join("escape.txt"),
    ] {
        if escaped.exists() {
            wrong.push(format!("{} was written", escaped.display()));
            let _ = fs::remove_file(&escaped);
        }
    }
    assert!(
        wrong.is_empty(),
        "every bad path must get 400 invalid_path:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn an_absolute_path_in_a_query_is_refused() {
    let nox = Nox::shared();
    let client = nox.client();
    let (content_type, multipart) = nox_e2e::multipart("f", "x.txt", b"planted");
    let content_type = format!("Content-Type: {content_type}");
    let probe = nox.dir().join("absolute-probe.txt");
    let attempts = [
        (
            "list /etc",
            client.raw("GET", "/files?prefix=/etc", &[], b""),
        ),
        (
            "upload to an absolute path",
            client.raw(
                "POST",
                &format!("/put?path={}", probe.display()),
                &[&content_type],
                &multipart,
            ),
        ),
    ];
    for (what, reply) in attempts {
        assert!(
            !reply.text().contains("passwd"),
            "{what} listed /etc: {}",
            reply.text()
        );
        assert!(
            is_invalid_path(&reply),
            "{what}: HTTP {} {}",
            reply.status,
            reply.text()
        );
    }
    assert!(!probe.exists(), "an upload to an absolute path was written");
}

#[test]
fn a_double_slash_path_does_not_reach_the_root() {
    let nox = Nox::shared();
    for target in ["/files//etc/passwd", "/files/%2F%2Fetc%2Fpasswd"] {
        let reply = nox.client().raw("GET", target, &[], b"");
        assert!(
            !reply.text().contains("root:x:0:0"),
            "{target} leaked /etc/passwd"
        );
        assert!(
            reply.status == 400 || reply.status == 404,
            "{target}: HTTP {} {}",
            reply.status,
            reply.text()
        );
    }
}

#[test]
fn symlinks_planted_by_a_job_are_not_followed_by_any_file_route() {
    let nox = Nox::shared();
    // A directory outside the workspace with a canary the routes must neither read,
    // overwrite nor delete.
    let outside = nox.dir().join(unique("outside"));
    fs::create_dir(&outside).expect("create the outside directory");
    let canary = unique("CANARY-CONTENT");
    fs::write(outside.join("canary.txt"), &canary).expect("write the canary");
    let link_dir = unique("link-dir");
    let link_file = unique("link-file");
    let link_etc = unique("link-etc");
    let reply = nox.run_sh(&format!(
        "ln -s {outside} {link_dir} && ln -s {outside}/canary.txt {link_file} && ln -s /etc {link_etc} && echo planted",
        outside = outside.display()
    ));
    assert_eq!(
        reply["stdout"], "planted\n",
        "the job could not plant the links: {reply}"
    );

    let client = nox.client();
    let (content_type, multipart) = nox_e2e::multipart("f", "x.txt", b"overwritten");
    let content_type = format!("Content-Type: {content_type}");
    let attempts = vec![
        (
            "GET through a dir link",
            client.raw("GET", &format!("/files/{link_dir}/canary.txt"), &[], b""),
        ),
        (
            "GET a file link",
            client.raw("GET", &format!("/files/{link_file}"), &[], b""),
        ),
        (
            "GET /etc/passwd through a link",
            client.raw("GET", &format!("/files/{link_etc}/passwd"), &[], b""),
        ),
        (
            "list through a dir link",
            client.raw("GET", &format!("/files?prefix={link_dir}"), &[], b""),
        ),
        (
            "PUT through a dir link",
            client.raw(
                "PUT",
                &format!("/files/{link_dir}/canary.txt"),
                &[],
                b"overwritten",
            ),
        ),
        (
            "PUT a new file through a dir link",
            client.raw("PUT", &format!("/files/{link_dir}/new.txt"), &[], b"x"),
        ),
        (
            "/put through a dir link",
            client.raw(
                "POST",
                &format!("/put?path={link_dir}/canary.txt"),
                &[&content_type],
                &multipart,
            ),
        ),
        (
            "DELETE through a dir link",
            client.raw("DELETE", &format!("/files/{link_dir}/canary.txt"), &[], b""),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, reply) in attempts {
        if reply.text().contains(&canary) || reply.text().contains("root:x:0:0") {
            wrong.push(format!("{what}: LEAKED outside content: {}", reply.text()));
        } else if !is_invalid_path(&reply) {
            wrong.push(format!("{what}: HTTP {} {}", reply.status, reply.text()));
        }
    }

    // Writing onto a link that is the last component may be refused, or may replace the
    // link itself with a regular file; it must never write through it.
    let workspace = nox.workspace("default");
    let writes = [
        ("PUT onto a file link", "PUT"),
        ("/put onto a file link", "POST"),
    ];
    for (what, method) in writes {
        let link = unique("link-last");
        let reply = nox.run_sh(&format!(
            "ln -s {}/canary.txt {link} && echo planted",
            outside.display()
        ));
        assert_eq!(reply["stdout"], "planted\n", "{reply}");
        let reply = if method == "PUT" {
            client.raw("PUT", &format!("/files/{link}"), &[], b"overwritten")
        } else {
            client.raw(
                "POST",
                &format!("/put?path={link}"),
                &[&content_type],
                &multipart,
            )
        };
        let replaced = reply.status == 200
            && fs::symlink_metadata(workspace.join(&link))
                .is_ok_and(|meta| meta.file_type().is_file());
        if !replaced && !is_invalid_path(&reply) {
            wrong.push(format!("{what}: HTTP {} {}", reply.status, reply.text()));
        }
    }

    assert_eq!(
        fs::read_to_string(outside.join("canary.txt"))
            .ok()
            .as_deref(),
        Some(canary.as_str()),
        "the canary outside the workspace was changed or deleted"
    );
    assert!(
        !outside.join("new.txt").exists(),
        "a file was created outside the workspace"
    );
    assert!(
        wrong.is_empty(),
        "symlinks must be refused with 400 invalid_path:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_listing_shows_a_planted_symlink_as_a_symlink_without_following_it() {
    let nox = Nox::shared();
    let dir = unique("listing");
    let reply = nox.run_sh(&format!(
        "mkdir {dir} && ln -s /etc {dir}/etc && echo ok > {dir}/file.txt && echo done"
    ));
    assert_eq!(reply["stdout"], "done\n", "{reply}");
    let body = nox
        .request("GET", &format!("/files?prefix={dir}"), &[], None)
        .expect_json(200);
    let files = body["files"].as_array().expect("files is an array");
    let find = |path: &str| files.iter().find(|entry| entry["path"] == path);
    let link = find(&format!("{dir}/etc")).unwrap_or_else(|| panic!("{dir}/etc is listed: {body}"));
    assert_eq!(link["type"], "symlink", "{body}");
    let file = find(&format!("{dir}/file.txt"))
        .unwrap_or_else(|| panic!("{dir}/file.txt is listed: {body}"));
    assert_eq!(file["type"], "file", "{body}");
    assert_eq!(file["size"], 3, "{body}");
    assert!(
        !files.iter().any(|entry| entry["path"]
            .as_str()
            .is_some_and(|path| path.contains("passwd"))),
        "the listing followed the link into /etc: {body}"
    );
}
