//! Files: symlinks and hard links planted by a job, `..` in every encoding, and a job racing
//! the file routes by swapping a directory for a symlink — on every file route nothing
//! outside the workspace is read, written or deleted (Judge0 CVE-2024-28185/28189 and
//! go-judge #176 were broken exactly here).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nox_e2e::{Client, Nox, Reply, unique};
use serde_json::json;

use super::common::{self, assert_serving, py, sh, stdout, tenants};

/// One request per file route for `path` (already URL-encoded as wanted), sent byte for
/// byte: download, raw upload, multipart upload, delete, list.
fn every_route(client: &Client, path: &str) -> Vec<(String, Reply)> {
    let (content_type, multipart) = nox_e2e::multipart("f", "x.txt", b"PLANTED-BY-THE-SUITE");
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
                &[],
                b"PLANTED-BY-THE-SUITE",
            ),
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
        (
            format!("DELETE /files/{path}"),
            client.raw("DELETE", &format!("/files/{path}"), &[], b""),
        ),
        (
            format!("GET /files?prefix={path}"),
            client.raw("GET", &format!("/files?prefix={path}"), &[], b""),
        ),
    ]
}

fn is_invalid_path(reply: &Reply) -> bool {
    reply.status == 400
        && serde_json::from_slice::<serde_json::Value>(&reply.body)
            .is_ok_and(|body| body["error"] == "invalid_path")
}

/// A directory outside every workspace holding `canary.txt` with a unique content.
struct Outside {
    dir: PathBuf,
    canary: String,
}

impl Outside {
    fn new(nox: &Nox) -> Outside {
        let dir = nox.dir().join(unique("outside"));
        fs::create_dir(&dir).expect("create the outside directory");
        let canary = unique("CANARY");
        fs::write(dir.join("canary.txt"), &canary).expect("write the canary");
        Outside { dir, canary }
    }

    /// What changed outside: anything but the untouched canary.
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        match fs::read_to_string(self.dir.join("canary.txt")) {
            Ok(text) if text == self.canary => {}
            Ok(_) => changes.push("canary.txt was overwritten".to_owned()),
            Err(_) => changes.push("canary.txt was deleted".to_owned()),
        }
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.file_name() != "canary.txt" {
                changes.push(format!("{} appeared", entry.path().display()));
            }
        }
        changes
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Asserts every reply is 400 invalid_path and none carries `secret`.
fn assert_all_refused(replies: Vec<(String, Reply)>, secret: &str) {
    let mut wrong = Vec::new();
    for (what, reply) in replies {
        if reply.text().contains(secret) {
            wrong.push(format!("{what}: LEAKED: {}", reply.text()));
        } else if !is_invalid_path(&reply) {
            wrong.push(format!("{what}: HTTP {} {}", reply.status, reply.text()));
        }
    }
    assert!(
        wrong.is_empty(),
        "every route must refuse with 400 invalid_path:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_symlink_to_etc_shadow_is_refused_by_every_file_route_and_shadow_is_unchanged() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let shadow = fs::read("/etc/shadow").unwrap_or_default();
    let link = unique("shadow-link");
    let dir_link = unique("etc-link");
    let reply = sh(
        nox,
        &format!("ln -s /etc/shadow {link} && ln -s /etc {dir_link} && echo planted"),
        10.0,
    );
    assert_eq!(stdout(&reply), "planted\n", "{reply}");
    let mut replies = every_route(nox.client(), &format!("{dir_link}/shadow"));
    replies.push((
        format!("GET /files/{link}"),
        nox.client().raw("GET", &format!("/files/{link}"), &[], b""),
    ));
    assert_all_refused(replies, "root:");
    // Writing onto the link itself may replace the link, never write through it.
    let _ = nox.client().raw(
        "PUT",
        &format!("/files/{link}"),
        &[],
        b"PLANTED-BY-THE-SUITE",
    );
    assert_eq!(
        fs::read("/etc/shadow").unwrap_or_default(),
        shadow,
        "/etc/shadow changed"
    );
    assert_serving(nox);
}

#[test]
fn a_symlink_to_the_executor_state_directory_is_refused_and_nothing_lands_there() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let probe = unique("state-probe");
    fs::write(nox.state_dir().join(&probe), "STATE-SECRET").expect("write in the state dir");
    let link = unique("state-link");
    let reply = sh(
        nox,
        &format!("ln -s {} {link} && echo planted", nox.state_dir().display()),
        10.0,
    );
    assert_eq!(stdout(&reply), "planted\n", "{reply}");
    assert_all_refused(
        every_route(nox.client(), &format!("{link}/{probe}")),
        "STATE-SECRET",
    );
    assert_all_refused(
        every_route(nox.client(), &format!("{link}/jobs/new.txt")),
        "STATE-SECRET",
    );
    let content = fs::read_to_string(nox.state_dir().join(&probe)).unwrap_or_default();
    let _ = fs::remove_file(nox.state_dir().join(&probe));
    assert_eq!(
        content, "STATE-SECRET",
        "the state file was changed or deleted"
    );
    assert!(
        !nox.state_dir().join("jobs/new.txt").exists(),
        "an upload landed in the state dir"
    );
    assert_serving(nox);
}

#[test]
fn a_symlink_to_another_workspace_is_refused_and_nothing_lands_there() {
    let _jobs = common::jobs();
    let nox = tenants();
    let alpha = nox.client_for("alpha");
    let beta = nox.client_for("beta");
    let secret = unique("ALPHA-SECRET");
    alpha.put("secret.txt", secret.as_bytes()).expect_json(200);
    let link = unique("to-alpha");
    let reply = beta.run_sh(&format!(
        "ln -s {} {link} && ln -s ../alpha/secret.txt {link}-file && echo planted",
        nox.workspace("alpha").display()
    ));
    assert_eq!(stdout(&reply), "planted\n", "{reply}");
    let mut replies = every_route(&beta, &format!("{link}/secret.txt"));
    replies.extend(every_route(&beta, &format!("{link}/new.txt")));
    replies.push((
        "GET through a relative file link".into(),
        beta.raw("GET", &format!("/files/{link}-file"), &[], b""),
    ));
    assert_all_refused(replies, &secret);
    assert_eq!(
        fs::read_to_string(nox.workspace("alpha").join("secret.txt")).unwrap_or_default(),
        secret
    );
    assert!(
        !nox.workspace("alpha").join("new.txt").exists(),
        "beta wrote into alpha"
    );
    assert_serving(nox);
}

#[test]
fn a_symlinked_directory_deep_in_a_path_is_refused_on_every_route() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let outside = Outside::new(nox);
    let top = unique("deep");
    let reply = sh(
        nox,
        &format!(
            "mkdir -p {top}/a/b && ln -s {} {top}/a/b/c && echo planted",
            outside.dir.display()
        ),
        10.0,
    );
    assert_eq!(stdout(&reply), "planted\n", "{reply}");
    let mut replies = every_route(nox.client(), &format!("{top}/a/b/c/canary.txt"));
    replies.extend(every_route(
        nox.client(),
        &format!("{top}/a/b/c/new/deeper.txt"),
    ));
    replies.extend(every_route(
        nox.client(),
        &format!("{top}%2Fa%2Fb%2Fc%2Fcanary.txt"),
    ));
    assert_all_refused(replies, &outside.canary);
    assert_eq!(outside.changes(), Vec::<String>::new());
    assert_serving(nox);
}

#[test]
fn a_hard_link_to_a_file_outside_cannot_be_made_and_one_made_anyway_is_never_served_or_written_through()
 {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let outside = Outside::new(nox);
    let name = unique("hard");
    let reply = sh(
        nox,
        &format!(
            "ln {}/canary.txt {name} 2>/dev/null && echo LINKED; echo end",
            outside.dir.display()
        ),
        10.0,
    );
    assert_eq!(
        stdout(&reply),
        "end\n",
        "a job hard-linked a file from outside: {reply}"
    );
    // As if a job had managed it anyway (same filesystem): the routes must still refuse to
    // serve it and must replace, not write through, the link.
    let planted = nox.workspace("default").join(&name);
    fs::hard_link(outside.dir.join("canary.txt"), &planted).expect("plant a hard link");
    let got = nox.client().raw("GET", &format!("/files/{name}"), &[], b"");
    assert!(
        !got.text().contains(&outside.canary),
        "a hard-linked file was served: {}",
        got.text()
    );
    assert!(is_invalid_path(&got), "HTTP {} {}", got.status, got.text());
    let put = nox.client().raw(
        "PUT",
        &format!("/files/{name}"),
        &[],
        b"PLANTED-BY-THE-SUITE",
    );
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        outside.changes(),
        Vec::<String>::new(),
        "the upload wrote through the link"
    );
    assert!(
        fs::metadata(&planted).is_ok_and(|meta| meta.nlink() == 1),
        "the upload replaced the link by a new file"
    );
    let _ = fs::remove_file(&planted);
    assert_serving(nox);
}

#[test]
fn a_job_cannot_hard_link_a_file_of_another_workspace_into_its_own() {
    let _jobs = common::jobs();
    let nox = tenants();
    let secret = unique("ALPHA-HARD");
    nox.client_for("alpha")
        .put("hard-secret.txt", secret.as_bytes())
        .expect_json(200);
    let name = unique("stolen");
    let reply = nox.client_for("beta").run_sh(&format!(
        "ln {}/hard-secret.txt {name} 2>/dev/null && echo LINKED; ln ../alpha/hard-secret.txt {name} 2>/dev/null && echo LINKED; echo end",
        nox.workspace("alpha").display()
    ));
    assert_eq!(stdout(&reply), "end\n", "{reply}");
    assert!(!nox.workspace("beta").join(&name).exists());
    assert_serving(nox);
}

/// `..` and friends in encodings a decoder might get wrong. Each must be refused, or name a
/// file inside the workspace (a literal `%2e%2e` is a legal file name).
const ENCODINGS: [&str; 18] = [
    "%2e%2e%2f%2e%2e%2fescape-enc.txt",
    "%2E%2E/escape-enc.txt",
    "..%2f..%2fescape-enc.txt",
    ".%2e/escape-enc.txt",
    "%2e./escape-enc.txt",
    "%252e%252e%252fescape-enc.txt",
    "%c0%ae%c0%ae/escape-enc.txt",
    "%e0%80%ae%e0%80%ae/escape-enc.txt",
    "..%c0%afescape-enc.txt",
    "..%5c..%5cescape-enc.txt",
    "%2e%2e%5cescape-enc.txt",
    "..;/escape-enc.txt",
    "a/%2e%2e/%2e%2e/escape-enc.txt",
    "a/./../../escape-enc.txt",
    "%ef%bc%8e%ef%bc%8e/escape-enc.txt",
    "....//escape-enc.txt",
    "%u002e%u002e/escape-enc.txt",
    "..%00/escape-enc.txt",
];

#[test]
fn dot_dot_in_every_encoding_never_reads_outside_the_workspace() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let mut wrong = Vec::new();
    for encoded in ENCODINGS {
        let file = encoded.replace("escape-enc.txt", "etc/passwd");
        let dir = encoded.replace("escape-enc.txt", "etc");
        for (what, reply) in [
            (
                format!("GET /files/{file}"),
                nox.client().raw("GET", &format!("/files/{file}"), &[], b""),
            ),
            (
                format!("GET /files?prefix={dir}"),
                nox.client()
                    .raw("GET", &format!("/files?prefix={dir}"), &[], b""),
            ),
        ] {
            if reply.text().contains("root:x:0:0")
                || (reply.status == 200 && reply.text().contains("passwd"))
            {
                wrong.push(format!("{what}: LEAKED {}", reply.text()));
            }
            if reply.status >= 500 {
                wrong.push(format!("{what}: HTTP {}", reply.status));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

#[test]
fn dot_dot_in_every_encoding_never_writes_or_deletes_outside_the_workspace() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let watched: Vec<PathBuf> = vec![
        nox.dir().join("escape-enc.txt"),
        nox.workspace_root().join("escape-enc.txt"),
        nox.state_dir().join("escape-enc.txt"),
        PathBuf::from("/escape-enc.txt"),
        PathBuf::from("/tmp/escape-enc.txt"),
    ];
    let mut wrong = Vec::new();
    for encoded in ENCODINGS {
        for (what, reply) in every_route(nox.client(), encoded) {
            if reply.status >= 500 {
                wrong.push(format!("{what}: HTTP {} {}", reply.status, reply.text()));
            }
        }
    }
    for path in &watched {
        if path.exists() {
            wrong.push(format!("{} was written", path.display()));
            let _ = fs::remove_file(path);
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_serving(nox);
}

/// The racing job: swaps `race/d` (a real directory) and `race/other` (a symlink to the
/// outside directory) with `renameat2(RENAME_EXCHANGE)`, and `race/f` (a file) with
/// `race/g` (a symlink to the canary), for `seconds`.
fn racer(top: &str, outside: &Path, seconds: f64) -> String {
    format!(
        r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("{top}/d", exist_ok=True)
open("{top}/d/canary.txt", "w").write("inside")
open("{top}/f", "w").write("inside")
os.symlink("{outside}", "{top}/other")
os.symlink("{outside}/canary.txt", "{top}/g")
swaps = 0
end = time.time() + {seconds}
while time.time() < end:
    for a, b in (("{top}/d", "{top}/other"), ("{top}/f", "{top}/g")):
        if libc.syscall(316, -100, a.encode(), -100, b.encode(), 2) == 0:
            swaps += 1
print("swaps", swaps)
"#,
        outside = outside.display()
    )
}

#[test]
fn uploads_racing_a_job_that_swaps_a_directory_for_a_symlink_never_land_outside() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let outside = Outside::new(nox);
    let top = unique("race-up");
    let client = nox.client().clone();
    let (content_type, multipart) = nox_e2e::multipart("f", "x.txt", b"PLANTED-BY-THE-SUITE");
    let content_type = format!("Content-Type: {content_type}");
    let (reply, statuses) = std::thread::scope(|scope| {
        let job = scope.spawn(|| py(nox, &racer(&top, &outside.dir, 5.0), 15.0));
        std::thread::sleep(Duration::from_millis(800));
        let mut statuses = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut n = 0;
        while Instant::now() < deadline {
            n += 1;
            let targets = [
                client.raw(
                    "PUT",
                    &format!("/files/{top}/d/up-{n}.txt"),
                    &[],
                    b"PLANTED-BY-THE-SUITE",
                ),
                client.raw(
                    "PUT",
                    &format!("/files/{top}/d/sub-{n}/up.txt"),
                    &[],
                    b"PLANTED-BY-THE-SUITE",
                ),
                client.raw(
                    "POST",
                    &format!("/put?path={top}/d/mp-{n}.txt"),
                    &[&content_type],
                    &multipart,
                ),
                client.raw(
                    "PUT",
                    &format!("/files/{top}/g"),
                    &[],
                    b"PLANTED-BY-THE-SUITE",
                ),
            ];
            statuses.extend(targets.iter().map(|reply| reply.status));
        }
        (job.join().expect("the racing job"), statuses)
    });
    assert!(stdout(&reply).starts_with("swaps "), "{reply}");
    assert!(
        statuses
            .iter()
            .all(|status| *status == 200 || *status == 400 || *status == 409),
        "unexpected statuses: {statuses:?}"
    );
    assert_eq!(
        outside.changes(),
        Vec::<String>::new(),
        "an upload landed outside the workspace"
    );
    assert_serving(nox);
}

#[test]
fn downloads_listings_and_deletes_racing_a_directory_swap_never_touch_outside() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let outside = Outside::new(nox);
    let top = unique("race-down");
    let client = nox.client().clone();
    let (reply, leaks) = std::thread::scope(|scope| {
        let job = scope.spawn(|| py(nox, &racer(&top, &outside.dir, 5.0), 15.0));
        std::thread::sleep(Duration::from_millis(800));
        let mut leaks = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            for (what, reply) in [
                (
                    "GET d/canary",
                    client.raw("GET", &format!("/files/{top}/d/canary.txt"), &[], b""),
                ),
                (
                    "GET f",
                    client.raw("GET", &format!("/files/{top}/f"), &[], b""),
                ),
                (
                    "list d",
                    client.raw("GET", &format!("/files?prefix={top}/d"), &[], b""),
                ),
                (
                    "list top",
                    client.raw("GET", &format!("/files?prefix={top}"), &[], b""),
                ),
                (
                    "DELETE d/canary",
                    client.raw("DELETE", &format!("/files/{top}/d/canary.txt"), &[], b""),
                ),
            ] {
                if reply.text().contains(&outside.canary) || reply.status >= 500 {
                    leaks.push(format!("{what}: HTTP {} {}", reply.status, reply.text()));
                }
            }
        }
        (job.join().expect("the racing job"), leaks)
    });
    assert!(stdout(&reply).starts_with("swaps "), "{reply}");
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    assert_eq!(outside.changes(), Vec::<String>::new());
    assert_serving(nox);
}

#[test]
fn a_python_filename_through_a_planted_symlink_does_not_write_outside() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let outside = Outside::new(nox);
    let link = unique("code-link");
    let reply = sh(
        nox,
        &format!("ln -s {} {link} && echo planted", outside.dir.display()),
        10.0,
    );
    assert_eq!(stdout(&reply), "planted\n", "{reply}");
    for filename in [format!("{link}/run.py"), format!("{link}/canary.txt")] {
        let reply = nox.client().post_json(
            "/run_py",
            &json!({ "code": "print('ran')", "filename": filename }),
        );
        assert!(
            reply.status == 400 && reply.json()["error"] == "invalid_path",
            "{filename}: HTTP {} {}",
            reply.status,
            reply.text()
        );
    }
    assert_eq!(outside.changes(), Vec::<String>::new());
    assert_serving(nox);
}

#[test]
fn a_fifo_or_socket_planted_by_a_job_is_refused_without_hanging_the_executor() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let fifo = unique("fifo");
    let sock = unique("sock");
    let reply = py(
        nox,
        &format!(
            "import os, socket\nos.mkfifo('{fifo}')\nsocket.socket(socket.AF_UNIX).bind('{sock}')\nprint('planted')"
        ),
        10.0,
    );
    assert_eq!(stdout(&reply), "planted\n", "{reply}");
    for name in [&fifo, &sock] {
        let started = Instant::now();
        let reply = nox.client().raw("GET", &format!("/files/{name}"), &[], b"");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "GET {name} hung"
        );
        assert!(
            (400..500).contains(&reply.status),
            "GET {name}: HTTP {} {}",
            reply.status,
            reply.text()
        );
        nox_e2e::assert_error_shape(&reply.json());
    }
    assert_serving(nox);
}

#[test]
fn a_listing_of_a_huge_directory_is_truncated_and_the_executor_survives() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let top = unique("huge");
    let reply = py(
        nox,
        &format!(
            "import os\nos.mkdir('{top}')\nfor i in range(10050):\n    open(f'{top}/f{{i}}', 'w').close()\nprint('made')"
        ),
        60.0,
    );
    assert_eq!(stdout(&reply), "made\n", "{reply}");
    let listing = nox
        .request("GET", &format!("/files?prefix={top}"), &[], None)
        .expect_json(200);
    assert_eq!(listing["truncated"], true);
    assert_eq!(listing["files"].as_array().map(Vec::len), Some(10_000));
    let _ = fs::remove_dir_all(nox.workspace("default").join(&top));
    assert_serving(nox);
}

#[test]
fn a_deeply_nested_tree_is_listed_without_crashing() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let top = unique("nest");
    let reply = py(
        nox,
        &format!(
            "import os\nos.chdir(os.getcwd())\nos.mkdir('{top}')\nos.chdir('{top}')\nfor i in range(400):\n    os.mkdir('d')\n    os.chdir('d')\nopen('leaf', 'w').close()\nprint('made')"
        ),
        30.0,
    );
    assert_eq!(stdout(&reply), "made\n", "{reply}");
    let listing = nox
        .request("GET", &format!("/files?prefix={top}"), &[], None)
        .expect_json(200);
    let entries = listing["files"].as_array().map_or(0, Vec::len);
    assert!(entries >= 400, "{entries} entries listed");
    let _ = fs::remove_dir_all(nox.workspace("default").join(&top));
    assert_serving(nox);
}

#[test]
fn file_names_with_control_characters_or_invalid_utf8_do_not_break_the_listing() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    let top = unique("names");
    let reply = py(
        nox,
        &format!(
            "import os\nos.mkdir('{top}')\nfor name in [b'new\\nline', b'tab\\there', b'\\xff\\xfe', b'esc\\x1b[31m', b'quote\"back\\\\']:\n    open(b'{top}/' + name, 'w').close()\nprint('made')"
        ),
        10.0,
    );
    assert_eq!(stdout(&reply), "made\n", "{reply}");
    let listing = nox
        .request("GET", &format!("/files?prefix={top}"), &[], None)
        .expect_json(200);
    assert_eq!(
        listing["files"].as_array().map(Vec::len),
        Some(5),
        "{listing}"
    );
    let got = nox
        .client()
        .raw("GET", &format!("/files/{top}/new%0Aline"), &[], b"");
    assert!(is_invalid_path(&got), "HTTP {} {}", got.status, got.text());
    let _ = fs::remove_dir_all(nox.workspace("default").join(&top));
    assert_serving(nox);
}

#[test]
fn the_workspace_itself_cannot_be_deleted_or_replaced_over_http() {
    let _jobs = common::jobs();
    let nox = Nox::shared();
    for target in [
        "/files/",
        "/files/.",
        "/files/%2e",
        "/files/./",
        "/files//",
        "/files/%2F",
    ] {
        for method in ["DELETE", "PUT"] {
            let reply = nox.client().raw(method, target, &[], b"x");
            assert!(
                (400..500).contains(&reply.status),
                "{method} {target}: HTTP {} {}",
                reply.status,
                reply.text()
            );
        }
    }
    assert!(nox.workspace("default").is_dir(), "the workspace is gone");
    assert_serving(nox);
}

#[test]
fn a_job_cannot_change_the_mode_times_or_attributes_of_another_workspace() {
    let _jobs = common::jobs();
    let nox = tenants();
    nox.client_for("alpha")
        .put("attr-target.txt", b"alpha")
        .expect_json(200);
    let alpha = nox.workspace("alpha");
    let before_dir = fs::metadata(&alpha).expect("alpha exists");
    let before_file = fs::metadata(alpha.join("attr-target.txt")).expect("the file exists");
    let code = format!(
        r#"
import os
for target in [{dir:?}, {file:?}]:
    for what, attempt in [
        ("chmod", lambda: os.chmod(target, 0o777)),
        ("utime", lambda: os.utime(target, (0, 0))),
        ("setxattr", lambda: os.setxattr(target, "user.nox", b"beta-was-here")),
    ]:
        try:
            attempt()
            print("CHANGED", what, target)
        except OSError:
            pass
print("end")
"#,
        dir = alpha.display().to_string(),
        file = alpha.join("attr-target.txt").display().to_string()
    );
    let reply = nox
        .client_for("beta")
        .run("/run_py", &json!({ "code": code, "timeout_s": 10 }));
    let after_dir = fs::metadata(&alpha).expect("alpha exists");
    let after_file = fs::metadata(alpha.join("attr-target.txt")).expect("the file exists");
    // Put things back for the other cases.
    let _ = fs::set_permissions(&alpha, before_dir.permissions());
    assert_eq!(
        stdout(&reply),
        "end\n",
        "a job of beta changed alpha's workspace: {reply}"
    );
    assert_eq!(before_dir.mode(), after_dir.mode());
    assert_eq!(before_file.mtime(), after_file.mtime());
    assert_serving(nox);
}
