//! Two tokens, two workspaces: neither sees the other's files, over HTTP or from a job.

use std::sync::OnceLock;

use nox_e2e::{Nox, random_hex};

fn two_tokens() -> &'static Nox {
    static TWO: OnceLock<Nox> = OnceLock::new();
    TWO.get_or_init(|| {
        let alpha = format!("alpha-{}", random_hex(16));
        let beta = format!("beta-{}", random_hex(16));
        Nox::builder()
            .tokens(&[("alpha", &alpha), ("beta", &beta)])
            .start()
    })
}

#[test]
fn each_token_works_in_its_own_workspace() {
    let nox = two_tokens();
    let a = nox.client_for("alpha").run_sh("pwd");
    let b = nox.client_for("beta").run_sh("pwd");
    assert_eq!(
        a["stdout"],
        format!("{}\n", nox.workspace("alpha").display()),
        "{a}"
    );
    assert_eq!(
        b["stdout"],
        format!("{}\n", nox.workspace("beta").display()),
        "{b}"
    );
}

#[test]
fn jobs_are_named_after_their_workspace_in_user_logname_and_getpass() {
    let nox = two_tokens();
    let code =
        "import getpass, os\nprint(os.environ['USER'], os.environ['LOGNAME'], getpass.getuser())";
    for workspace in ["alpha", "beta"] {
        let client = nox.client_for(workspace);
        let python = client.run_py(code);
        assert_eq!(
            python["stdout"],
            format!("{workspace} {workspace} {workspace}\n"),
            "{python}"
        );
        let shell = client.run_sh("echo \"$USER $LOGNAME\"");
        assert_eq!(
            shell["stdout"],
            format!("{workspace} {workspace}\n"),
            "{shell}"
        );
    }
}

#[test]
fn jobs_find_their_workspace_s_account_in_passwd_and_group() {
    let nox = two_tokens();
    if !nox.layer_active("views") {
        nox_e2e::skip(
            "jobs_find_their_workspace_s_account_in_passwd_and_group",
            "no views here (they need root and namespaces): workspace uids have no passwd entry",
        );
        return;
    }
    let code = "import grp, os, pwd\nme = pwd.getpwuid(os.getuid())\nprint(me.pw_name, me.pw_dir == os.environ['HOME'], me.pw_shell, grp.getgrgid(os.getgid()).gr_name)";
    for workspace in ["alpha", "beta"] {
        let client = nox.client_for(workspace);
        let shell = client.run_sh("whoami; id -un; id -gn; ls -ld . | cut -d' ' -f3,4");
        assert_eq!(
            shell["stdout"],
            format!("{workspace}\n{workspace}\n{workspace}\n{workspace} {workspace}\n"),
            "{shell}"
        );
        let python = client.run_py(code);
        assert_eq!(
            python["stdout"],
            format!("{workspace} True /bin/sh {workspace}\n"),
            "{python}"
        );
    }
}

#[test]
fn a_file_of_one_token_is_invisible_to_the_other_over_http() {
    let nox = two_tokens();
    let alpha = nox.client_for("alpha");
    let beta = nox.client_for("beta");
    alpha
        .put("secret-a.txt", b"alpha's secret")
        .expect_json(200);
    assert_eq!(
        alpha
            .request("GET", "/files/secret-a.txt", &[], None)
            .text(),
        "alpha's secret"
    );

    let reply = beta.request("GET", "/files/secret-a.txt", &[], None);
    assert_eq!(reply.status, 404, "{}", reply.text());
    nox_e2e::assert_error_shape(&reply.json());
    let listing = beta.request("GET", "/files", &[], None).expect_json(200);
    assert!(
        !listing.to_string().contains("secret-a"),
        "beta's listing shows alpha's file: {listing}"
    );
    let reply = beta.request("DELETE", "/files/secret-a.txt", &[], None);
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(
        nox.workspace("alpha").join("secret-a.txt").exists(),
        "beta deleted alpha's file"
    );
}

#[test]
fn a_job_of_one_token_cannot_read_or_write_the_other_workspace() {
    let nox = two_tokens();
    nox.client_for("alpha")
        .put("secret-b.txt", b"alpha's other secret")
        .expect_json(200);
    let alpha_dir = nox.workspace("alpha");
    let reply = nox.client_for("beta").run_sh(&format!(
        "cat ../alpha/secret-b.txt 2>/dev/null && echo READ-RELATIVE; \
         cat '{dir}/secret-b.txt' 2>/dev/null && echo READ-ABSOLUTE; \
         ls '{dir}' >/dev/null 2>&1 && echo LISTED; \
         (echo x > '{dir}/from-beta.txt') 2>/dev/null && echo WROTE; \
         ls .. >/dev/null 2>&1 && echo LISTED-ROOT; echo end",
        dir = alpha_dir.display()
    ));
    assert_eq!(reply["stdout"], "end\n", "{reply}");
    assert!(
        !alpha_dir.join("from-beta.txt").exists(),
        "beta's job wrote into alpha's workspace"
    );
}
