//! Authentication: `Authorization: Bearer <token>` on everything but `/health`.

use nox_e2e::Nox;
use serde_json::json;

/// Every authenticated route, with a harmless request.
fn routes() -> Vec<(&'static str, &'static str, Option<Vec<u8>>)> {
    let run_sh = json!({ "cmd": "echo should-not-run" })
        .to_string()
        .into_bytes();
    let run_py = json!({ "code": "print('should-not-run')" })
        .to_string()
        .into_bytes();
    vec![
        ("POST", "/run_sh", Some(run_sh)),
        ("POST", "/run_py", Some(run_py)),
        ("POST", "/put?path=auth-probe.txt", Some(b"x".to_vec())),
        ("GET", "/files", None),
        ("GET", "/files?prefix=", None),
        ("GET", "/files/auth-probe.txt", None),
        ("PUT", "/files/auth-probe.txt", Some(b"x".to_vec())),
        ("DELETE", "/files/auth-probe.txt", None),
    ]
}

fn assert_refused(nox: &Nox, authorization: Option<&str>) {
    let client = nox.client().with_token(None);
    let mut wrong = Vec::new();
    for (method, path, body) in routes() {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(value) = authorization {
            headers.push(("Authorization", value));
        }
        let reply = client.request(method, path, &headers, body);
        let ok = reply.status == 401
            && serde_json::from_slice::<serde_json::Value>(&reply.body)
                .is_ok_and(|body| body["error"] == "unauthorized" && body["message"].is_string());
        if !ok {
            wrong.push(format!(
                "{method} {path}: HTTP {} {}",
                reply.status,
                reply.text()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "with Authorization {authorization:?} every route must answer 401 unauthorized:\n{}",
        wrong.join("\n")
    );
    assert!(
        !nox.workspace("default").join("auth-probe.txt").exists(),
        "an unauthenticated upload was saved"
    );
}

#[test]
fn every_route_but_health_refuses_a_request_without_a_token() {
    assert_refused(Nox::shared(), None);
}

#[test]
fn every_route_refuses_a_wrong_token() {
    let nox = Nox::shared();
    assert_refused(nox, Some("Bearer not-the-token"));
    // The right token with a byte more or less, or as a prefix of something longer.
    assert_refused(nox, Some(&format!("Bearer {}x", nox.token())));
    let token = nox.token();
    assert_refused(nox, Some(&format!("Bearer {}", &token[..token.len() - 1])));
    assert_refused(nox, Some("Bearer "));
}

#[test]
fn basic_auth_and_a_bare_token_are_refused() {
    let nox = Nox::shared();
    assert_refused(nox, Some(&format!("Basic {}", nox.token())));
    assert_refused(nox, Some(nox.token()));
    assert_refused(nox, Some(&format!("Token {}", nox.token())));
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let nox = Nox::shared();
    let client = nox.client().with_token(None);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let value = format!("{scheme} {}", nox.token());
        let reply = client.request(
            "POST",
            "/run_sh",
            &[
                ("Authorization", &value),
                ("Content-Type", "application/json"),
            ],
            Some(json!({ "cmd": "echo authorised" }).to_string().into_bytes()),
        );
        let body = reply.expect_json(200);
        assert_eq!(body["stdout"], "authorised\n", "scheme {scheme}: {body}");
    }
}

#[test]
fn health_needs_no_token_and_ignores_a_wrong_one() {
    let nox = Nox::shared();
    nox.client().with_token(None).health().expect_json(200);
    nox.client()
        .with_token(Some("wrong"))
        .health()
        .expect_json(200);
}
