//! Helpers shared by the client tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use nox_e2e::Nox;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `noxctl` with the instance's URL and token in the environment and no user config.
pub fn noxctl(nox: &Nox) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_noxctl"));
    command
        .env("NOX_URL", nox.url())
        .env("NOX_API_TOKEN", nox.token())
        .env("XDG_CONFIG_HOME", "/nonexistent/noxctl-tests")
        .stdin(Stdio::null());
    command
}

/// Runs noxctl with `args`; the whole output.
pub fn run(nox: &Nox, args: &[&str]) -> Output {
    noxctl(nox).args(args).output().expect("run noxctl")
}

/// Text of a stream.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The bin directory of the Python tools' virtualenv (`clients/tools/pytools.sh`), made once.
pub fn pytools() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo().join("clients/tools/pytools.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run clients/tools/pytools.sh");
        assert!(
            output.status.success(),
            "clients/tools/pytools.sh failed ({}): PyPI must be reachable to install \
             openapi-spec-validator, schemathesis and prometheus_client",
            output.status
        );
        let stdout = text(&output.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("pytools.sh prints the bin directory"),
        )
    })
}
